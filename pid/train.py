"""Training entry point: `python -m pid.train experiment=NAME [overrides]` (or `make train exp=NAME`).

Thin on purpose: compose the config, check it, instantiate the parts, fit, export, compare.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pid.preflight import check_config
from pid.weights.release import apply_release
from pid.utils.errors import MissingWeightsError, PiDConfigError

log = logging.getLogger("pid.train")


def build(cfg: DictConfig):
    """Instantiate (datamodule, module, trainer) from a composed config."""
    import lightning.pytorch as pl
    import torch
    from hydra.utils import instantiate

    from pid.lit.compile import compile_net
    from pid.utils.loggers import instantiate_callbacks, instantiate_loggers, route_lightning_logs_to_root
    from pid.utils.run_naming import apply_run_naming, remember_wandb_id

    route_lightning_logs_to_root()
    apply_release(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")

    datamodule = instantiate(cfg.data, _convert_="all")
    latent = instantiate(cfg.latent).prepare(datamodule, cfg)  # e.g. the embedded latent fits itself
    text_encoder = instantiate(cfg.text) if cfg.get("text") else None
    model = instantiate(cfg.model, latent=latent, text_encoder=text_encoder, _convert_="all")
    compile_net(model, cfg.get("compile"))
    apply_run_naming(cfg)
    model.run_config = OmegaConf.to_container(cfg, resolve=True)

    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(model.run_config)
    remember_wandb_id(cfg, loggers)
    return datamodule, model, trainer


def build_trainer(cfg: DictConfig, **kwargs):
    """``cfg.trainer`` as a Lightning Trainer; ``trainer.context_parallel`` (not a Trainer argument) makes
    its DDP/FSDP strategy context-parallel (:func:`pid.parallel.context.context_parallel_strategy`)."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from pid.parallel.context import context_parallel_strategy

    with open_dict(cfg.trainer):
        size = cfg.trainer.pop("context_parallel", 1)
        try:
            if int(size or 1) > 1:
                strategy = cfg.trainer.get("strategy")
                strategy = strategy if isinstance(strategy, str) else instantiate(strategy)
                kwargs["strategy"] = context_parallel_strategy(strategy, int(size))
            trainer = instantiate(cfg.trainer, **kwargs)
        finally:
            cfg.trainer.context_parallel = size
    return trainer


def write_metrics(metrics: dict, cfg: DictConfig) -> None:
    """<run folder>/metrics.json: the final metrics and the one a sweeper optimises (rank 0 only)."""
    import json
    import os
    from pathlib import Path

    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) != 0 or not cfg.train:
        return
    key = cfg.get("optimized_metric")
    out = {"optimized_metric": key, "value": metrics.get(key or ""), "metrics": metrics}
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    Path(cfg.paths.output_dir, "metrics.json").write_text(json.dumps(out, indent=1))


def train(cfg: DictConfig) -> dict:
    """Fit one run, export the decoder, compare on held-out crops; returns the final metrics."""
    from pid.lit.ema import averaged_net_state, find_ema
    from pid.lit.strategies import fsdp_root
    from pid.lit.fault_tolerance import find_preemption
    from pid.utils.resume import mark_complete, prepare_run
    from pid.utils.run_naming import save_resolved_config

    # Auto-resume (resume=auto): may point cfg.paths.output_dir at the earlier run of this experiment.
    ckpt_path = prepare_run(cfg) if cfg.train else cfg.get("ckpt_path")
    datamodule, model, trainer = build(cfg)
    check_compare_options(cfg, model)
    if trainer.is_global_zero and not trainer.fast_dev_run:
        save_resolved_config(model.run_config, cfg.paths.output_dir)
    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    preemption = find_preemption(trainer)
    if preemption is not None and preemption.preempted:  # checkpoint saved; the re-run finishes the job
        metrics.update({"run/preempted": 1.0, "run/requeued": float(preemption.requeued),
                        "run/exit_code": float(0 if preemption.requeued else preemption.exit_code)})
        return metrics
    finished = trainer.state.status == "finished"
    if cfg.train and not trainer.fast_dev_run and trainer.is_global_zero and finished:
        mark_complete(cfg.paths.output_dir, trainer.global_step)

    if cfg.train and not trainer.fast_dev_run and trainer.global_step == 0:
        log.warning("no training step ran (trainer.max_steps=%s): nothing is exported or compared, so an "
                    "untrained decoder cannot pass for this run's result", cfg.trainer.get("max_steps"))
        return metrics
    sharded = fsdp_root(trainer) is not None
    if cfg.train and not trainer.fast_dev_run and sharded:
        # FSDP: every rank holds a shard; gather the (EMA) weights on all ranks, rank 0 writes them.
        net_state = averaged_net_state(trainer, model, find_ema(trainer))
    else:
        net_state = None
    if cfg.train and not trainer.fast_dev_run and trainer.is_global_zero:
        from pid.api import export_decoder

        path = export_decoder(model, f"{cfg.paths.output_dir}/pid_decoder.safetensors", ema=find_ema(trainer),
                              net_state=net_state)
        log.info("exported the decoder (EMA weights) to %s", path)
        if cfg.compare and sharded:
            log.info("held-out comparison skipped under FSDP (the model is sharded across ranks): "
                     "`make eval ckpt=%s`", path)
        elif cfg.compare:
            metrics.update(heldout_comparison(model)(model, datamodule, ema=find_ema(trainer),
                                                     out_dir=cfg.paths.output_dir,
                                                     **(cfg.get("compare_options") or {})))
    return metrics


def heldout_comparison(model):
    """The held-out comparison run after training: the module's own (``heldout_comparison()``, e.g. DMD2's
    student vs teacher) or :func:`pid.eval.heldout.compare_on_heldout`."""
    from pid.eval.heldout import compare_on_heldout

    own = getattr(model, "heldout_comparison", None)
    return own() if own is not None else compare_on_heldout


def check_compare_options(cfg: DictConfig, model) -> None:
    """Refuse ``compare_options`` keys the comparison does not take before training, not after it.

    Raises:
        PiDConfigError: naming the unknown keys and the accepted ones.
    """
    import inspect

    if not cfg.get("compare") or not cfg.get("train", True):
        return
    options = dict(cfg.get("compare_options") or {})
    params = inspect.signature(heldout_comparison(model)).parameters
    fixed = {"module", "datamodule", "ema", "out_dir", "extractor"}
    accepted = [name for name in params if name not in fixed]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise PiDConfigError(f"compare_options.{unknown[0]} is not an option of the held-out comparison "
                             f"(unknown: {', '.join(unknown)}); it takes {', '.join(accepted)} "
                             "(or set compare=false)")
    if options.get("sigmas") is not None:
        from pid.api import check_sigma

        sigmas = list(options["sigmas"])
        try:
            check_sigma(sigmas, len(sigmas), "train")  # the rule every decode applies
        except ValueError as err:
            raise PiDConfigError(f"compare_options.sigmas={sigmas}: {err}") from None


def finish_wandb() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        check_config(apply_release(cfg))
        try:
            metrics = train(cfg)
        finally:
            finish_wandb()  # each sweep job its own W&B run (Lightning reuses an unfinished one)
    except (MissingWeightsError, PiDConfigError) as err:
        log.error("%s", err)
        sys.exit(2)
    except Exception as err:  # Hydra's instantiate wraps errors raised while building a part
        if isinstance(err.__cause__, (MissingWeightsError, PiDConfigError)):
            log.error("%s", err.__cause__)
            sys.exit(2)
        raise
    if metrics.get("run/preempted"):
        log.warning("stopped by a signal after saving a checkpoint: re-run the same command to resume")
        if int(metrics["run/exit_code"]):
            sys.exit(int(metrics["run/exit_code"]))
        return None
    value = metrics.get(cfg.get("optimized_metric") or "")
    write_metrics(metrics, cfg)
    return value


if __name__ == "__main__":
    main()
