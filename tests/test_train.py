"""End-to-end training on real images at tiny size: fast_dev_run, checkpoint → load → identical decode,
and the paper experiments stopping early with a clear message when their weights are missing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import compose_train, tiny_train_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fast_dev_run(tiny_image_root, tmp_path):
    from pid.train import train

    cfg = compose_train(tiny_train_overrides(tiny_image_root, tmp_path, "debug=fast_dev_run"))
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (tmp_path / "latent.safetensors").is_file(), "the embedded latent is fitted and saved on first use"


def test_training_without_a_logger_leaves_out_the_callbacks_that_only_log(tiny_image_root, tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor

    from pid.train import build

    cfg = compose_train(tiny_train_overrides(
        tiny_image_root, tmp_path, "logger=none", "trainer.max_steps=2", "++trainer.limit_val_batches=0",
        "callbacks.image_grid.every_n_steps=0", "callbacks.model_checkpoint.every_n_train_steps=100",
        "compare=false"))
    datamodule, module, trainer = build(cfg)
    assert trainer.logger is None
    assert not any(isinstance(cb, LearningRateMonitor) for cb in trainer.callbacks)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2


def test_teacher_latent_consistency_term_uses_the_clean_image_estimate(tiny_image_root, tmp_path):
    from pid.diffusion import flow, losses
    from pid.train import build

    cfg = compose_train(tiny_train_overrides(tiny_image_root, tmp_path, "model.consistency.weight=3.0",
                                             "model.consistency.pool=8"))
    _, module, _ = build(cfg)
    torch.manual_seed(0)
    hq = torch.rand(2, 3, 32, 32) * 2 - 1
    cond = module.training_condition(hq)
    t, eps = torch.tensor([0.3, 0.9]), torch.randn_like(hq)
    terms = module.diffusion_loss(hq, cond, t, eps)
    x_t = flow.interpolate(hq, eps, t)
    v = module.net(x_t, t, **{k: cond[k] for k in ("latent", "sigma", "latent_keep", "y", "y_mask")})
    want = 3.0 * losses.latent_consistency_loss(x_t - t.view(-1, 1, 1, 1) * v, hq, 8, cond["sigma"],
                                                keep=cond["latent_keep"])
    assert terms["consistency"].item() == pytest.approx(want.item(), rel=1e-5)
    # the loss is the sum of every term (the quickstart's adapter adds the aux RGB term)
    total = sum(v.item() for k, v in terms.items() if k != "loss")
    assert terms["loss"].item() == pytest.approx(total, rel=1e-5)


@pytest.mark.slow
def test_checkpoint_save_load_gives_identical_decode(tiny_image_root, tmp_path):
    from pid.api import load_decoder
    from pid.lit.ema import find_ema
    from pid.train import build

    cfg = compose_train(tiny_train_overrides(
        tiny_image_root, tmp_path, "trainer.max_steps=3", "trainer.val_check_interval=3",
        "callbacks.model_checkpoint.every_n_train_steps=3", "callbacks.image_grid.every_n_steps=3",
        "callbacks.ema.decay=0.5", "compare=false"))
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert (tmp_path / "grids").is_dir() and any((tmp_path / "grids").glob("*.png"))

    from pid.api import export_decoder

    export = export_decoder(module, tmp_path / "pid_decoder.safetensors", ema=find_ema(trainer))
    z = module.latent.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    sigma = torch.tensor([0.0, 0.3])

    def reference():
        with find_ema(trainer).averaged(module):
            return module.decode(z, sigma, num_steps=3, generator=torch.Generator().manual_seed(7))

    expected = reference()
    assert expected.shape == (2, 3, 64, 64)
    for path in (export, tmp_path / "checkpoints" / "last.ckpt"):
        decoder = load_decoder(path)
        got = decoder.decode(z, sigma, num_steps=3, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)

    # The embedded latent travels inside the export: it decodes without the latent file.
    (tmp_path / "latent.safetensors").rename(tmp_path / "latent.moved")
    got = load_decoder(export).decode(z, sigma, num_steps=3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    # EMA weights differ from the raw weights after training, and the export holds the EMA ones.
    raw = module.decode(z, sigma, num_steps=3, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(raw, expected)


@pytest.mark.slow
def test_resume_restores_step_and_ema(tiny_image_root, tmp_path):
    from pid.lit.ema import find_ema
    from pid.train import build

    common = ["callbacks.model_checkpoint.every_n_train_steps=2", "compare=false",
              "trainer.val_check_interval=2",
              "callbacks.image_grid.every_n_steps=0"]
    cfg = compose_train(tiny_train_overrides(tiny_image_root, tmp_path, "trainer.max_steps=2", *common))
    dm, module, trainer = build(cfg)
    trainer.fit(module, datamodule=dm)
    ema_before = {k: v.clone() for k, v in find_ema(trainer).shadow.items()}

    cfg = compose_train(tiny_train_overrides(tiny_image_root, tmp_path, "trainer.max_steps=2", *common,
                                             f"ckpt_path={tmp_path}/checkpoints/last.ckpt"))
    dm, module, trainer = build(cfg)
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path)
    assert trainer.global_step == 2
    ema = find_ema(trainer)
    assert ema.num_updates == 2
    for k, v in ema_before.items():
        torch.testing.assert_close(ema.shadow[k].cpu(), v.cpu())


@pytest.mark.parametrize("experiment", ["pid_vae_8x", "pid_vae_4x"])
def test_paper_experiment_without_weights_fails_fast_with_the_key_to_set(experiment, tmp_path):
    start = time.monotonic()
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "pid.train", f"experiment={experiment}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for key in ("model.init_from", "latent.path", "text.path"):
        assert key in out, out
    assert "Traceback" not in out
    assert elapsed < 60


def test_make_passes_hydra_overrides_through():
    proc = subprocess.run(["make", "-n", "train", "exp=pid_vae_8x", "trainer.max_steps=10", "+foo.bar=1"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    line = [ln for ln in proc.stdout.splitlines() if "pid.train" in ln][-1]
    assert line.split()[-3:] == ["experiment=pid_vae_8x", "'trainer.max_steps=10'", "'+foo.bar=1'"]


def test_export_config_describes_the_network_as_built(tmp_path):
    """A module that dropped its training-only aux head after the config was composed (distillation) exports
    a config without it, which load_decoder rebuilds; a config that names another network is refused."""
    from types import SimpleNamespace

    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pid.api import export_decoder, load_decoder
    from pid.utils.errors import PiDConfigError

    cfg = compose_train(["experiment=quickstart", f"paths.output_dir={tmp_path}"])
    assert cfg.model.net.adapter.aux_rgb_head
    net = instantiate(cfg.model.net)
    net.adapter.aux_rgb_head = None
    module = SimpleNamespace(net=net, latent=SimpleNamespace(), sr_scale=int(cfg.sr_scale),
                             run_config=OmegaConf.to_container(cfg, resolve=True))
    path = export_decoder(module, tmp_path / "student.safetensors")
    decoder = load_decoder(path, build_latent=False)
    assert decoder.net.adapter.aux_rgb_head is None
    torch.testing.assert_close(decoder.net.state_dict(), net.state_dict())

    module.run_config["model"]["net"]["hidden_size"] = 64
    with pytest.raises(PiDConfigError, match="does not describe the trained network"):
        export_decoder(module, tmp_path / "other.safetensors")
    assert not (tmp_path / "other.safetensors").exists()


def test_unknown_compare_options_are_refused_before_training():
    """A misspelt compare_options key stops the run at start, naming the accepted keys, instead of after
    the whole training run; each module's own comparison decides what it takes."""
    from types import SimpleNamespace

    from conftest import compose_train
    from pid.lit.distill import DMD2Module
    from pid.train import check_compare_options
    from pid.utils.errors import PiDConfigError

    teacher = SimpleNamespace()
    check_compare_options(compose_train(["experiment=quickstart", "compare_options.max_crops=4"]), teacher)
    with pytest.raises(PiDConfigError, match=r"compare_options.num_crops is not an option.*max_crops"):
        check_compare_options(compose_train(["experiment=quickstart", "+compare_options.num_crops=4"]),
                              teacher)
    check_compare_options(compose_train(["experiment=quickstart", "+compare_options.num_crops=4",
                                         "compare=false"]), teacher)
    dmd2 = ["experiment=quickstart_dmd2", "model.teacher_ckpt=unused"]
    check_compare_options(compose_train([*dmd2, "+compare_options.student_steps=2"]), DMD2Module)
    with pytest.raises(PiDConfigError, match=r"compare_options.sigmas .*student_steps"):
        check_compare_options(compose_train([*dmd2, "+compare_options.sigmas=[0]"]), DMD2Module)
    for sigmas in ("[0,1.5]", "[-0.1]"):
        with pytest.raises(PiDConfigError, match=r"compare_options.sigmas=.*must be in \[0, 1\]"):
            cfg = compose_train(["experiment=quickstart", f"compare_options.sigmas={sigmas}"])
            check_compare_options(cfg, teacher)


def test_a_run_with_no_training_step_exports_nothing(tiny_image_root, tmp_path, caplog):
    """trainer.max_steps=0 trains nothing: no pid_decoder.safetensors appears that a later glob (DMD2's
    teacher, make eval) would take for a trained decoder."""
    import logging

    from pid.train import train

    cfg = compose_train(tiny_train_overrides(
        tiny_image_root, tmp_path, "logger=none", "trainer.max_steps=0", "++trainer.limit_val_batches=0",
        "callbacks.image_grid.every_n_steps=0"))
    with caplog.at_level(logging.WARNING, logger="pid.train"):
        train(cfg)
    assert not list(tmp_path.rglob("pid_decoder.safetensors"))
    assert any("no training step ran" in r.getMessage() for r in caplog.records)
