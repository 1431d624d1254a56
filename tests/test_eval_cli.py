"""`make eval` equivalent: pid.evaluate on tiny random checkpoints writes the report with every baseline."""

import csv
import json
import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import CONF_DIR, compose_train
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pid.eval.registry import Column, Metric


def _export(path, cfg, latent_cfg: dict, latent, sampling: dict):
    """A pid_decoder.safetensors with random tiny weights, as `pid.train` would export it."""
    from pid.api import export_decoder

    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    run_config = {"model": {"net": OmegaConf.to_container(cfg.model.net, resolve=True), "sampling": sampling,
                            "time": {"shift_base": 6.0, "shift_ref_size": 2048}},
                  "latent": latent_cfg, "sr_scale": 4}
    return export_decoder(SimpleNamespace(net=net, latent=latent, run_config=run_config, sr_scale=4), path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_image_root):
    from pid.latents.patch_pca import fit_from_folder
    from pid.latents.rgb import RGBLatent

    out = tmp_path_factory.mktemp("eval_ckpts")
    latent = fit_from_folder(tiny_image_root / "train", channels=16, patch=8, downscale=4)
    latent_path = latent.save(out / "latent.safetensors")
    pca_cfg = {"_target_": "pid.latents.prepare.embedded_latent", "channels": 16, "down_factor": 8,
               "path": str(latent_path), "fit_if_missing": False}
    teacher_cfg = compose_train(["experiment=quickstart", f"latent.path={latent_path}"])
    teacher = _export(out / "teacher.safetensors", teacher_cfg, pca_cfg, latent, {"num_steps": 2})
    student = _export(out / "student.safetensors", teacher_cfg, pca_cfg, latent,
                      {"sampler": "sde", "num_steps": 4, "t_list": [0.999, 0.866, 0.634, 0.342]})
    sr_cfg = compose_train(["experiment=quickstart_sr"])
    rgb_cfg = OmegaConf.to_container(sr_cfg.latent)
    sr = _export(out / "sr.safetensors", sr_cfg, rgb_cfg, RGBLatent(), {"num_steps": 2})
    return {"teacher": teacher, "student": student, "sr": sr}


def test_quickstart_sr_experiment_is_an_rgb_conditioned_pid():
    cfg = compose_train(["experiment=quickstart_sr"])
    latent = instantiate(cfg.latent)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert (latent.channels, latent.down_factor) == (3, 1)
    assert torch.equal(latent.encode(x), x) and torch.equal(latent.decode(x), x)
    net = instantiate(cfg.model.net)
    quickstart_net = instantiate(compose_train(["experiment=quickstart"]).model.net)
    assert type(net).__name__ == type(quickstart_net).__name__


def test_evaluate_writes_the_report_with_every_baseline(checkpoints, tiny_image_root, tmp_path):
    from spandrel.architectures.ESRGAN import ESRGAN

    from pid.evaluate import evaluate

    # Real-ESRGAN's architecture (RRDBNet) at a tiny random size, loaded back by spandrel
    torch.manual_seed(0)
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=4).state_dict(), tmp_path / "tiny_esrgan.pth")
    out = tmp_path / "report"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[
            "eval=tiny", f"ckpt={checkpoints['teacher']}", f"student_ckpt={checkpoints['student']}",
            f"sr_cascade_ckpt={checkpoints['sr']}", f"data.root={tiny_image_root / 'val'}",
            f"report.out_dir={out}",
            "methods.upscalers=[{name: RealESRGAN_x4plus, weights: /nonexistent.pth}, "
            f"{{name: tiny_esrgan, weights: {tmp_path / 'tiny_esrgan.pth'}}}]",
            "+data.groups.space=hubble*",
            "metrics.clip.model_cfg={embed_dim: 16, "
            "vision_cfg: {image_size: 32, layers: 1, width: 32, patch_size: 16, head_width: 16}, "
            "text_cfg: {context_length: 16, vocab_size: 49408, width: 32, heads: 2, layers: 1}}",
        ])
    result = evaluate(cfg)
    names = [r["name"] for r in result["rows"]]
    for expected in ("ground_truth", "native_bicubic", "native_lanczos", "sr_cascade@2",
                     "spandrel:tiny_esrgan", "pid_teacher@2", "pid_student@2",
                     "early_exit_pid@0", "early_exit_pid@0.5", "early_exit_native@0.5"):
        assert expected in names, names
    assert [s["name"] for s in result["skipped"]] == ["spandrel:RealESRGAN_x4plus"]
    md = (out / "results.md").read_text()
    for label in ("native decode + bicubic", "native decode + Lanczos", "diffusion SR", "PiD teacher",
                  "PiD student", "spandrel:RealESRGAN_x4plus | skipped", "patch-FID", "patch-KID"):
        assert label in md, label
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(names) + 1
    by = {r["name"]: r for r in result["rows"]}
    for name in ("native_bicubic", "pid_teacher@2", "sr_cascade@2", "spandrel:tiny_esrgan", "pid_student@2"):
        r = by[name]
        for key in ("fid", "kid", "patch_fid", "patch_kid", "psnr", "ssim", "clip", "latency_ms",
                    "peak_mem_mb"):
            assert r[key] == r[key], (name, key)  # not NaN
        assert r["latency_p10_ms"] <= r["latency_ms"] <= r["latency_p90_ms"]
    assert by["ground_truth"]["patch_fid"] == pytest.approx(0.0, abs=1e-6)
    assert by["native_bicubic"]["psnr"] > by["early_exit_native@0.5"]["psnr"]  # noise in the latent hurts
    assert "not configured" in result["notes"]["lpips"]
    for name in ("native_bicubic", "pid_student@2"):  # one group holding every crop: the set's own fidelity
        group = by[name]["by_group"]["space"]
        assert set(by[name]["by_group"]) == {"space"}  # text_pages matches no crop here: left out
        assert group["psnr"] == pytest.approx(by[name]["psnr"])
        assert group["ssim"] == pytest.approx(by[name]["ssim"])
    assert "Fidelity by group" in md and f"space (n={by['native_bicubic']['by_group']['space']['n']})" in md
    assert "fewer than the 2048 Inception dimensions" in result["notes"]["patch_fid"]  # a few tiny crops
    summary = result["summary"]
    heads = [s for s in summary if s.endswith(":")]
    assert heads == ["PiD student (2 steps) vs native decode + bicubic:",
                     "PiD student at σ=0 vs native + bicubic at σ=0:",
                     "PiD student at σ=0.5 vs native + bicubic at σ=0.5:"], summary
    assert summary[-1].startswith("speed:")
    # a few tiny crops: below every measure's floor, so no family names a winner
    n = by["native_bicubic"]["by_group"]["space"]["n"]
    assert sum(f"not ranked with {n} crops" in s for s in summary) >= 3 * 2
    assert not any(" ahead" in s for s in summary)
    assert (out / "verdicts.json").is_file() and "Verdicts (pid/eval/verdict.py" in md
    for f in ("quality_vs_latency.png", "quality_vs_sigma.png", "compare.html"):
        assert (out / f).stat().st_size > 0
    page = (out / "compare.html").read_text()
    assert "type='range'" in page and "crops/000_pid_student_at_2.png" in page
    assert json.loads((out / "results.json").read_text())["rows"]


def test_clip_reported_as_not_configured_and_missing_ckpt_names_key(checkpoints, tiny_image_root, tmp_path):
    from pid.eval.inputs import resolve_ckpt
    from pid.evaluate import evaluate
    from pid.utils.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="sr_cascade_ckpt"):
        resolve_ckpt(str(tmp_path / "none.safetensors"), "sr_cascade_ckpt")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[
            "eval=tiny", f"ckpt={checkpoints['teacher']}", f"data.root={tiny_image_root / 'val'}",
            f"report.out_dir={tmp_path}", "methods.early_exit.enabled=false", "latency.enabled=false",
            "methods.native_lanczos=false", "metrics.fid=null"])
    result = evaluate(cfg)
    skipped = {s["name"] for s in result["skipped"]}
    assert {"sr_cascade", "spandrel"} <= skipped
    assert any(name.startswith("pid_student@") for name in skipped)
    assert "not configured" in (tmp_path / "results.md").read_text().split("CLIP")[1]
    assert "metrics.qalign.path" in result["notes"]["qalign"]
    assert "Q-Align" in (tmp_path / "results.md").read_text()


def test_qalign_in_eval_names_its_config_keys(tmp_path):
    import json as _json

    from pid.eval.metrics import QAlign
    from pid.eval.registry import EvalContext
    from pid.utils.errors import MissingWeightsError, PiDConfigError

    def setup(**kw):
        metric = QAlign(**kw)
        metric.name = "qalign"
        return metric.setup(EvalContext(None, []))

    assert "not configured" in setup(path=None)
    with pytest.raises(MissingWeightsError, match="metrics.qalign.path") as err:
        setup(path=str(tmp_path / "absent"))
    assert err.value.config_key == "metrics.qalign.path"
    (tmp_path / "one-align").mkdir()
    config = {"auto_map": {"AutoModelForCausalLM": "x.Y"}}
    (tmp_path / "one-align" / "config.json").write_text(_json.dumps(config))
    with pytest.raises(PiDConfigError, match="metrics.qalign.trust_remote_code=true"):
        setup(path=str(tmp_path / "one-align"))
    assert setup(path=str(tmp_path / "one-align"), trust_remote_code=True) is None


class MeanBrightness(Metric):
    """A toy metric, registered by its config entry alone: the mean pixel value on the 0–255 scale."""

    columns = (Column("brightness", "mean brightness", ".1f", "higher"),)

    def score(self, images, ctx):
        return {"brightness": float(images.add(1).mul(127.5).mean())}


def test_a_new_metric_is_one_class_and_one_config_entry(checkpoints, tiny_image_root, tmp_path, caplog):
    from pid.evaluate import evaluate

    caplog.set_level(logging.INFO, logger="pid.evaluate")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[
            "eval=tiny", f"ckpt={checkpoints['teacher']}", f"data.root={tiny_image_root / 'val'}",
            f"report.out_dir={tmp_path}", "methods.early_exit.enabled=false", "methods.native_lanczos=false",
            "methods.sr_cascade.enabled=false", "methods.student.enabled=false", "metrics.fid=null",
            "~metrics.qalign", f"+metrics.mean_brightness={{_target_: {__name__}.MeanBrightness}}"])
    result = evaluate(cfg)
    by = {r["name"]: r for r in result["rows"]}
    truth = by["ground_truth"]
    assert truth["brightness"] > 0
    md = (tmp_path / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "mean brightness↑" in header and "Q-Align" not in header
    assert "FID↓" not in header.replace("patch-FID", "")
    assert f"| {truth['brightness']:.1f} |" in md
    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    for name in ("ground_truth", "native_bicubic", "pid_teacher@2"):
        assert float(rows[name]["brightness"]) == pytest.approx(by[name]["brightness"])
    lines = [r.getMessage() for r in caplog.records if r.name == "pid.evaluate"]
    for name in ("native_bicubic", "pid_teacher@2"):
        line = next(m for m in lines if m.startswith(name))
        assert f"brightness={by[name]['brightness']:.3g}" in line and "patch_fid=" in line


def test_load_decoder_takes_a_run_folder_and_a_glob_as_ckpt_does(checkpoints, tmp_path):
    import shutil

    from pid.api import load_decoder

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    shutil.copy(checkpoints["teacher"], run / "pid_decoder.safetensors")
    expected = load_decoder(checkpoints["teacher"]).net.state_dict()
    for path in (run, f"{tmp_path}/runs/*/pid_decoder.safetensors"):
        got = load_decoder(path).net.state_dict()
        assert all(torch.equal(got[k], v) for k, v in expected.items())
