"""W&B run name, group and tags from the experiment (and the sweep), applied before loggers are built.

* single run: name ``<run_name>``, group ``<experiment>`` (the ``experiment=`` choice, else task_name),
  tags ``tags`` + the experiment + the trainer config.
* sweep job (``--multirun``): name ``<run_name>/<job number>:<overrides of this job>``, group
  ``<run_name>-sweep-<sweep folder>`` so the jobs of one sweep land in one W&B group, plus a ``sweep`` tag.
* on auto-resume the W&B run id stored in the run folder (``wandb_run_id.txt``) is reused with
  ``resume="allow"``, so a preempted run continues the same W&B run.

Values set explicitly (``logger.wandb.name=...``) are kept when they differ from the defaults.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

WANDB_ID_FILE = "wandb_run_id.txt"


def _hydra():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001
        return None


def naming(cfg: DictConfig, hydra_cfg=None) -> dict:
    """{name, group, tags} for this run."""
    hc = hydra_cfg if hydra_cfg is not None else _hydra()
    run_name = str(cfg.get("run_name") or cfg.get("task_name") or "run")
    choices = dict(hc.runtime.choices) if hc is not None else {}
    experiment = choices.get("experiment") or str(cfg.get("task_name") or run_name)
    tags = [str(t) for t in (cfg.get("tags") or [])]
    tags += [t for t in (experiment, choices.get("trainer") and f"trainer:{choices['trainer']}") if t]
    name, group = run_name, experiment
    if hc is not None and str(hc.mode) == "RunMode.MULTIRUN":
        job = hc.job
        name = f"{run_name}/{job.num}" + (f":{job.override_dirname}" if job.override_dirname else "")
        group = f"{run_name}-sweep-{Path(hc.sweep.dir).name}"
        tags.append("sweep")
        if choices.get("hparams_search"):
            tags.append(f"search:{choices['hparams_search']}")
    return {"name": name, "group": group, "tags": list(dict.fromkeys(tags))}


def apply_run_naming(cfg: DictConfig) -> None:
    wb = OmegaConf.select(cfg, "logger.wandb")
    if not isinstance(wb, DictConfig) or "_target_" not in wb:
        return
    n = naming(cfg)
    with open_dict(cfg):
        if wb.get("name") in (None, cfg.get("run_name")):
            wb.name = n["name"]
        if wb.get("group") in (None, cfg.get("task_name")):
            wb.group = n["group"]
        wb.tags = list(dict.fromkeys([*(wb.get("tags") or []), *n["tags"]]))
        id_file = Path(str(cfg.paths.output_dir)) / WANDB_ID_FILE
        if wb.get("id") is None and id_file.is_file():
            wb.id = id_file.read_text().strip()
            wb.resume = "allow"


def remember_wandb_id(cfg: DictConfig, loggers: list) -> None:
    """Store the W&B run id in the run folder (for auto-resume)."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            try:
                run_id = lg.version
                if run_id:
                    out = Path(str(cfg.paths.output_dir))
                    out.mkdir(parents=True, exist_ok=True)
                    (out / WANDB_ID_FILE).write_text(str(run_id))
            except Exception:  # noqa: BLE001 - naming is a convenience, never a failure
                pass


def save_resolved_config(config: dict | None, output_dir) -> None:
    """<run folder>/resolved_config.yaml: the config with every interpolation resolved (what W&B gets)."""
    if config is None:
        return
    out = Path(str(output_dir))
    out.mkdir(parents=True, exist_ok=True)
    (out / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
