"""Every config composes and resolves; experiments wire sizes without hand arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_train

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment):
    cfg = compose_train([f"experiment={experiment}", "paths.output_dir=/tmp/out"])
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    net = resolved["model"]["net"]
    assert net["sr_scale"] == resolved["sr_scale"]
    assert net["latent_channels"] == resolved["latent"]["channels"]
    assert net["latent_down"] == resolved["latent"]["down_factor"]


@pytest.mark.parametrize("overrides", [
    ["model=prior"],
    ["debug=fast_dev_run"],
    ["debug=default"],
    ["trainer=gpu"],
    ["trainer=ddp"],
    ["model/net/adapter=v1_5", "model.net.freeze_backbone=true"],
    ["logger=none"],
    ["callbacks=none"],
])
def test_groups_compose(overrides):
    cfg = compose_train(["experiment=quickstart", "paths.output_dir=/tmp/out", *overrides])
    OmegaConf.to_container(cfg, resolve=True)


def test_prior_has_no_adapter():
    cfg = compose_train(
        ["experiment=quickstart", "model=prior", "model/net=tiny", "paths.output_dir=/tmp/out"]
    )
    net = instantiate(cfg.model.net)
    assert net.adapter is None


def test_quickstart_net_builds_with_adapter():
    cfg = compose_train(["experiment=quickstart", "paths.output_dir=/tmp/out"])
    net = instantiate(cfg.model.net)
    assert net.adapter is not None and net.sr_scale == 4


@pytest.mark.parametrize("experiment,sr", [("pid_vae_4x", 4), ("pid_vae_8x", 8)])
def test_paper_experiments_build_the_paper_network_on_meta(experiment, sr):
    import torch

    cfg = compose_train([f"experiment={experiment}", "paths.output_dir=/tmp/out"])
    assert cfg.sr_scale == sr
    with torch.device("meta"):
        net = instantiate(cfg.model.net)
    backbone = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("adapter."))
    assert 1.17e9 <= backbone <= 1.43e9
    assert set(cfg.required_weights) == {"model.init_from", "latent.path", "text.path"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes_the_value_range_check(experiment):
    from pid.preflight import check_value_ranges

    check_value_ranges(compose_train([f"experiment={experiment}", "paths.output_dir=/tmp/out"]))


@pytest.mark.parametrize("experiment, override, message", [
    ("quickstart", "model.optimizer.lr=-1", "model.optimizer.lr=-1 must be > 0"),
    ("quickstart", "model.optimizer.lr=0", "model.optimizer.lr=0 must be > 0"),
    ("quickstart", "model.optimizer.lr=abc", "model.optimizer.lr='abc' must be a finite number"),
    ("quickstart", "data.batch_size=-1", "data.batch_size=-1 must be >= 1"),
    ("quickstart", "data.batch_size=2.5", "data.batch_size=2.5 must be a whole number"),
    ("quickstart", "data.num_workers=-2", "data.num_workers=-2 must be >= 0"),
    ("quickstart", "model.latent_dropout=1.5", "model.latent_dropout=1.5 must be in [0.0, 1.0]"),
    ("quickstart", "model.sampling.num_steps=0", "model.sampling.num_steps=0 must be >= 1"),
    ("quickstart", "trainer.max_steps=-5", "trainer.max_steps=-5 must be >= -1"),
    ("quickstart", "callbacks.ema.decay=1.5", "callbacks.ema.decay=1.5 must be in [0.0, 1.0]"),
    ("quickstart", "sr_scale=0", "sr_scale=0 must be >= 1"),
    ("quickstart_dmd2", "model.student_optimizer.lr=-1e-5", "model.student_optimizer.lr=-1e-05 must be > 0"),
    ("quickstart_dmd2", "model.warmup_steps.student=-3", "model.warmup_steps.student=-3 must be >= 0"),
    ("quickstart", "model.sampling.sampler=foo", "sampler='foo' must be one of dpmpp_2m, euler"),
    ("quickstart", "compare_options.max_crops=0", "compare_options.max_crops=0 must be >= 1"),
    ("quickstart", "compare_options.max_crops=2.5", "compare_options.max_crops=2.5 must be a whole number"),
    ("quickstart", "compare_options.max_crops=abc", "compare_options.max_crops='abc' must be a whole number"),
    ("quickstart", "model.latent_noise.sigma_max=2", "model.latent_noise.sigma_max=2 must be in [0.0, 1.0]"),
    ("quickstart", "seed=abc", "seed='abc' must be a whole number"),
    ("quickstart", "model.optimizer.betas=[0.9,1.5]", "model.optimizer.betas[1]=1.5 must be in [0.0, 1.0)"),
    ("quickstart_dmd2", "model.student_every=2.5", "model.student_every=2.5 must be a whole number"),
    ("quickstart_dmd2", "model.gan.gen_weight=-1", "model.gan.gen_weight=-1 must be >= 0.0"),
    ("quickstart_dmd2", "model.teacher_cfg.latent=-1", "model.teacher_cfg.latent=-1 must be >= 0.0"),
    ("quickstart_dmd2", "model.loss_weights.regression=-1", "loss_weights.regression=-1 must be >= 0.0"),
    ("quickstart_dmd2", "model.student_t_list=[1.5,0.5]", "student_t_list[0]=1.5 must be in [0.0, 1.0]"),
    ("quickstart_dmd2", "compare_options.max_crops=-3", "compare_options.max_crops=-3 must be >= 1"),
    ("quickstart", "model.optimizer.lr=nan", "model.optimizer.lr=nan must be a finite number"),
    ("quickstart", "model.optimizer.lr=inf", "model.optimizer.lr=inf must be a finite number"),
    ("quickstart", "model.optimizer.betas=[0.9]", "model.optimizer.betas=[0.9] must hold 2 values"),
    ("quickstart", "model.time.shift_base=0", "model.time.shift_base=0 must be > 0"),
    ("quickstart", "model.time.shift_rule=foo", "model.time.shift_rule='foo' must be one of area"),
    ("quickstart", "model.time.logit_std=-1", "model.time.logit_std=-1 must be > 0"),
    ("quickstart", "model.consistency.weight=-1", "model.consistency.weight=-1 must be >= 0.0"),
    ("quickstart", "callbacks.image_grid.sigmas=[2]", "image_grid.sigmas[0]=2 must be in [0.0, 1.0]"),
    ("quickstart", "trainer.val_check_interval=0", "trainer.val_check_interval=0 must be > 0"),
    ("quickstart", "seed=-1", "seed=-1 must be in [0, 4294967295]"),
    ("quickstart", "trainer.max_steps=-1", "model.lr_decay=cosine decays over trainer.max_steps"),
])
def test_values_out_of_range_are_refused_naming_the_key(experiment, override, message):
    from pid.preflight import check_config
    from pid.utils.errors import PiDConfigError

    cfg = compose_train([f"experiment={experiment}", "paths.output_dir=/tmp/out", override])
    with pytest.raises(PiDConfigError) as err:
        check_config(cfg)
    assert message in str(err.value)
