"""Build loggers from config; W&B goes offline by itself when no credentials are configured."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def route_lightning_logs_to_root() -> None:
    """Let Lightning's messages reach the run's handlers once.

    Lightning gives its package logger ``lightning`` a console handler of its own ("INFO: ..."), and
    ``lightning.pytorch`` / ``lightning.fabric`` one each when it is imported before logging is configured,
    which Hydra does later: each message then printed twice, once in Lightning's format. With handlers on
    the root logger (Hydra's console and ``train.log``), those private handlers are removed and the
    messages propagate to the root; otherwise nothing changes.
    """
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for handler in list(lg.handlers):
            if type(handler) is logging.StreamHandler:
                lg.removeHandler(handler)
        lg.propagate = True


def wandb_credentials_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def instantiate_loggers(cfg: DictConfig | None) -> list:
    loggers = []
    for name, lg in (cfg or {}).items():
        if not isinstance(lg, DictConfig) or "_target_" not in lg:
            continue
        kwargs = {}
        if lg._target_.endswith("WandbLogger"):
            mode = os.environ.get("WANDB_MODE")
            if mode in ("offline", "disabled") or (mode is None and not wandb_credentials_available()):
                kwargs["offline"] = True
                log.info("W&B: no API key set, logging offline (upload later with `wandb sync %s/wandb`)",
                         lg.get("save_dir", "."))
            Path(lg.save_dir).mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(lg, **kwargs))
    return loggers


_NEEDS_A_LOGGER = ("lightning.pytorch.callbacks.LearningRateMonitor",)


def instantiate_callbacks(cfg: DictConfig | None, has_logger: bool = True) -> list:
    """The configured callbacks; without a logger (``logger=none``) those that only log are left out."""
    callbacks = []
    for name, cb in (cfg or {}).items():
        if not (isinstance(cb, DictConfig) and "_target_" in cb):
            continue
        if not has_logger and cb._target_ in _NEEDS_A_LOGGER:
            log.info("callbacks.%s (%s) left out: no logger is configured", name, cb._target_)
            continue
        callbacks.append(instantiate(cb))
    return callbacks
