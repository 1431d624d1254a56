"""Where a config key's weights are: a file, a run folder of ``pid.train``, or a glob (newest match)."""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path
from typing import Callable

from pid.utils.errors import MissingWeightsError

log = logging.getLogger(__name__)

EXPORT_NAME = "pid_decoder.safetensors"
#: Files every run folder of ``pid.train`` holds from its start (a folder with one is a run, not weights).
RUN_MARKERS = ("run_identity.json", "train.log", ".hydra")


def describe_run(export: Path) -> str:
    """How long the run that wrote ``export`` trained, from its ``run_complete.json``: " (trained 300
    steps)", or "" when the file is not an export of a finished run."""
    try:
        steps = json.loads((export.parent / "run_complete.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f" (trained {steps} steps)"


def _is_run_without_export(path: Path) -> bool:
    return path.is_dir() and not (path / EXPORT_NAME).is_file() and any(
        (path / marker).exists() for marker in RUN_MARKERS)


def _export_of(path: Path) -> Path:
    """A run folder's export, or ``path`` itself."""
    return path / EXPORT_NAME if path.is_dir() and (path / EXPORT_NAME).is_file() else path


def _newest_compatible(candidates: list[Path],
                       compatible) -> tuple[Path | None, list[tuple[Path, Exception]]]:
    """The newest candidate ``compatible`` accepts (the last one without a check), and the newer ones it
    refused with their reasons (newest first)."""
    if compatible is None:
        return candidates[-1], []
    passed = []
    for path in reversed(candidates):
        err = compatible(path)
        if err is None:
            return path, passed
        passed.append((path, err))
    return None, passed


def _none_fits(config_key: str, text: str, n: int, without: str, path: Path, err: Exception) -> tuple:
    """The arguments of the error for a glob none of whose exports fits the run (the newest one's reason)."""
    message = (f"{config_key}={text}: none of its {n} finished run(s) fits this run{without}. The newest, "
               f"{path}:\n{err}")
    return (message, getattr(err, "short", str(err))) if hasattr(err, "short") else (message,)


def resolve_weights_path(value: str | os.PathLike | None, config_key: str, what: str, expected: str,
                         source: str | None = None,
                         compatible: Callable[[Path], Exception | None] | None = None) -> Path:
    """The weights file ``value`` names, for the config key ``config_key``.

    ``value`` is a file; a run folder of ``pid.train`` (its ``pid_decoder.safetensors``); another folder
    (returned as is: an official DCP checkpoint the weights reader takes, or refuses saying why); or a glob
    (``*``, ``?``, ``[``), which resolves to its newest match by modification time (ties: the later path),
    e.g. ``logs/quickstart/runs/*/pid_decoder.safetensors`` for the latest quickstart run. ``~`` expands.
    A glob passes over run folders without an export (runs that stopped early or failed their config
    check) and resolves a run folder to its export. A glob's choice is logged with the number of matches
    and the steps its run trained, so a run says which file it used. A run folder without an export (a
    run that stopped early) is refused as such, naming its last checkpoint when it has one.

    ``compatible``: for globs, a check of each candidate file (newest first) that returns None when it fits
    the caller's run, else the exception saying why (e.g. :class:`pid.identity.IdentityMismatch`: another
    latent); the newest compatible match is taken and the log says how many were passed over and why.

    Raises:
        MissingWeightsError: ``value`` unset, nothing matches the glob, or the path does not exist; the
            message names ``config_key``, ``what`` is needed and ``expected`` files, and ``source``.
        PiDConfigError: a glob none of whose finished runs is compatible; the message gives the newest
            one's reason (both identities and the way to a correct run).
    """
    if value in (None, "", "???", "null"):
        raise MissingWeightsError(what, config_key, expected, source=source)
    text = str(Path(str(value)).expanduser())
    if glob.has_magic(text):
        matches = sorted(glob.glob(text), key=lambda p: (os.path.getmtime(p), p))
        usable = [m for m in matches if not _is_run_without_export(Path(m))]
        if not usable:
            found = f" ({len(matches)} run folder(s) without {EXPORT_NAME})" if matches else ""
            raise MissingWeightsError(what + found, config_key, expected, source=source, path=text)
        skipped = len(matches) - len(usable)
        chosen, passed = _newest_compatible([_export_of(Path(m)) for m in usable], compatible)
        if chosen is None:
            path, err = passed[0]
            without = f"; {skipped} run folder(s) without an export" if skipped else ""
            raise type(err)(*_none_fits(config_key, text, len(usable), without, path, err))
        over = [f"{skipped} run folder(s) without an export"] if skipped else []
        if passed:
            reasons = "; ".join(f"{p}: {getattr(e, 'short', e)}" for p, e in passed[:3])
            more = f"; and {len(passed) - 3} more" if len(passed) > 3 else ""
            over.append(f"{len(passed)} newer export(s) of another model ({reasons}{more})")
        log.info("%s=%s: %s%s, the newest %sof %d match%s%s", config_key, text, chosen, describe_run(chosen),
                 "compatible one " if compatible is not None else "", len(usable),
                 "" if len(usable) == 1 else "es", f" (passed over: {', '.join(over)})" if over else "")
        return chosen
    path = Path(text)
    if path.is_dir() and (path / EXPORT_NAME).is_file():
        log.info("%s=%s: the run folder's export %s%s", config_key, text, path / EXPORT_NAME,
                 describe_run(path / EXPORT_NAME))
        return path / EXPORT_NAME
    if _is_run_without_export(path):
        last = path / "checkpoints" / "last.ckpt"
        hint = f" Its last checkpoint can be used as is: {config_key}={last}." if last.is_file() else ""
        raise MissingWeightsError.with_message(
            f"{config_key}={text} is a run folder of pid.train without {EXPORT_NAME}: the run stopped before "
            "it exported (see its train.log; re-running its command resumes it), or trained no step. Give a "
            f"finished run's folder or its export file.{hint}", config_key)
    if not path.exists():
        raise MissingWeightsError(what, config_key, expected, source=source, path=path)
    return path
