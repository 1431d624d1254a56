"""Checks that run before anything is built, so a misconfigured run fails in seconds, not after loading."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pid.utils.errors import MissingWeightsError


def _present(value) -> bool:
    if value in (None, "", "???"):
        return False
    path = Path(str(value)).expanduser()
    return path.exists()


def check_required_weights(cfg: DictConfig) -> None:
    """Every key listed in ``cfg.required_weights`` must point to an existing file or folder.

    Raises one MissingWeightsError naming every key still to set and what it expects.
    """
    required = cfg.get("required_weights") or {}
    missing = []
    for key, expected in required.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if not _present(value):
            shown = "unset" if value in (None, "", "???") else f"'{value}' does not exist"
            missing.append(f"  {key}  ({shown})\n      expected: {expected}")
    if missing:
        lines = "\n".join(missing)
        overrides = " ".join(f"{line.split()[0]}=/path/to/..." for line in missing)
        raise MissingWeightsError.with_message(
            f"This experiment needs weights that are not on disk:\n{lines}\n"
            f"Set them on the command line, e.g.  make train exp=<name> {overrides}",
            config_key=missing[0].split()[0])
