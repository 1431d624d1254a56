"""Warn before `make install` when a file system it writes to lacks the space (stdlib only: runs before
the venv exists). The lock's torch is PyPI's CUDA build: about 6.3 GB in .venv, and pip holds about 3.5 GB
of downloaded wheels while it installs them, in its cache (unless PIP_NO_CACHE_DIR is set) and its
temporary folder (TMPDIR). With less, pip stops part-way with "No space left on device".

Usage: python scripts/check_install_space.py VENV_DIR   (exit 0 always; warnings on stderr)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

VENV_GB = 7.0
WHEELS_GB = 3.5


def existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the cache folder may not exist yet)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def pip_cache_dir() -> Path | None:
    if os.environ.get("PIP_NO_CACHE_DIR", "").lower() not in ("", "0", "false", "no", "off"):
        return None
    if os.environ.get("PIP_CACHE_DIR"):
        return Path(os.environ["PIP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pip"


def main(venv: str) -> None:
    places = [(Path(venv), "venv", "the virtual environment (CUDA build of torch)")]
    cache = pip_cache_dir()
    if cache is not None:
        places.append((cache, "wheels", "pip's cache of downloaded wheels (PIP_NO_CACHE_DIR=1 skips it)"))
    places.append((Path(tempfile.gettempdir()), "wheels", "pip's temporary files (TMPDIR moves them)"))
    by_device: dict[int, list] = {}
    for path, kind, what in places:
        root = existing(path)
        by_device.setdefault(root.stat().st_dev, []).append((root, kind, what))
    for entries in by_device.values():
        kinds = {kind for _, kind, _ in entries}
        need = VENV_GB * ("venv" in kinds) + WHEELS_GB * ("wheels" in kinds)
        free = shutil.disk_usage(entries[0][0]).free / 2**30
        if free < need:
            uses = "; ".join(f"{what} in {root}" for root, _, what in entries)
            print(f"make install: {free:.1f} GB free on the file system of {entries[0][0]}, which holds "
                  f"{uses}; about {need:.1f} GB are needed there. Free space there or move what can move; "
                  "trying anyway.", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
