"""Training from NVIDIA's released weights: `release=` fixes the network, `model.init_from` loads the file
strictly (tiny official files from ../shared/official, preset files made as a user would)."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import compose_train, tiny_train_overrides
from test_official_release import OFFICIAL, pytestmark, tiny_preset  # noqa: F401 (skip without shared/)


def build_run(tmp_path, root, *extra):
    from pid.train import build

    cfg = compose_train(tiny_train_overrides(root, tmp_path / "run", "trainer.max_steps=1", *extra))
    return build(cfg)


def test_init_from_an_official_teacher_leaves_nothing_at_init(tmp_path, tiny_image_root, caplog):
    preset = tiny_preset(tmp_path, "v1_5_teacher")
    teacher = OFFICIAL / "tiny" / "v1_5_teacher_full.pth"
    with caplog.at_level(logging.INFO, logger="pid.weights.load"):
        _, module, _ = build_run(tmp_path, tiny_image_root, f"release={preset}", f"model.init_from={teacher}")
    report = module.init_report
    assert report.num_left_at_init == 0 and report.group == "net_ema"
    assert sum(report.loaded.values()) == 202 and report.loaded["gates"] > 0 and report.loaded["heads"] > 0
    assert "left at init: 0" in caplog.text
    assert module.net.freeze_backbone  # the v1.5 recipe trains the adapter only
    ema = torch.load(teacher, weights_only=True)
    got = module.net.state_dict()
    assert torch.equal(got["adapter.output_heads.0.weight"], ema["net_ema.lq_proj.output_heads.0.weight"])


def test_init_from_a_pixel_prior_starts_the_adapter_at_init(tmp_path, tiny_image_root, caplog):
    """A PixelDiT checkpoint (no adapter tensors at all) starts a teacher: the adapter is reported at init."""
    state = torch.load(OFFICIAL / "tiny" / "v1_5_teacher_full.pth", weights_only=True)
    prior = {
        k: v
        for k, v in state.items()
        if k.startswith("net_ema.") and ".lq_proj." not in k and "pit_lq_gate" not in k
    }
    prior = {"net." + k[len("net_ema.") :]: v for k, v in prior.items()}
    torch.save(prior, tmp_path / "pixeldit.pth")
    with caplog.at_level(logging.INFO, logger="pid.weights.load"):
        _, module, _ = build_run(
            tmp_path,
            tiny_image_root,
            f"release={tiny_preset(tmp_path, 'v1_5_teacher')}",
            f"model.init_from={tmp_path / 'pixeldit.pth'}",
        )
    report = module.init_report
    assert report.loaded["backbone"] == len(prior) and set(report.left_at_init) == {
        "adapter",
        "gates",
        "heads",
    }


def test_init_from_a_file_with_a_foreign_tensor_stops_naming_it(tmp_path, tiny_image_root):
    from pid.utils.errors import PiDConfigError

    state = torch.load(OFFICIAL / "tiny" / "v1_5_teacher_full.pth", weights_only=True)
    state["net_ema.blocks.0.unknown_scale"] = torch.ones(3)
    torch.save(state, tmp_path / "model.pth")
    with pytest.raises(Exception) as err:
        build_run(
            tmp_path,
            tiny_image_root,
            f"release={tiny_preset(tmp_path, 'v1_5_teacher')}",
            f"model.init_from={tmp_path / 'model.pth'}",
        )
    cause = err.value if isinstance(err.value, PiDConfigError) else err.value.__cause__
    assert isinstance(cause, PiDConfigError) and "blocks.0.unknown_scale" in str(cause)


def test_a_release_with_another_latent_space_says_which_to_select(tmp_path, tiny_image_root):
    from pid.utils.errors import PiDConfigError

    with pytest.raises(PiDConfigError, match="latent=flux1"):
        build_run(tmp_path, tiny_image_root, "release=flux_2kto4k_v1pt5")


def test_make_eval_scores_official_files_named_by_their_presets(tmp_path, tiny_image_root):
    """`make eval ckpt=<teacher .pth> student_ckpt=<student .pth> release=... student_release=...
    latent_path=`."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR
    from pid.evaluate import evaluate
    from test_latents_vae import tiny_release_vae

    tiny_release_vae("flux1").save_pretrained(tmp_path / "vae")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                "eval=tiny",
                f"ckpt={OFFICIAL / 'tiny' / 'v1_5_teacher_full.pth'}",
                f"student_ckpt={OFFICIAL / 'tiny' / 'v1_5_student_release.pth'}",
                f"release={tiny_preset(tmp_path, 'v1_5_teacher', 'flux1')}",
                f"student_release={tiny_preset(tmp_path, 'v1_5_student', 'flux1')}",
                f"latent_path={tmp_path / 'vae'}",
                f"data.root={tiny_image_root / 'val'}",
                f"report.out_dir={tmp_path / 'report'}",
                "methods.sr_cascade.enabled=false",
                "methods.early_exit.enabled=false",
                "latency.enabled=false",
            ],
        )
    result = evaluate(cfg)
    by = {r["name"]: r for r in result["rows"]}
    for name in ("pid_teacher@2", "pid_student@2"):
        assert by[name]["psnr"] == by[name]["psnr"], name  # scored, not NaN
    assert (tmp_path / "report" / "results.md").is_file()
