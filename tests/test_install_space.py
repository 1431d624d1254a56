"""`make install` warns before pip runs out of disk, per file system it writes to."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_install_space.py"


@pytest.fixture
def space(monkeypatch):
    spec = importlib.util.spec_from_file_location("check_install_space", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    free = {}

    class Usage:
        def __init__(self, path):
            self.free = free.get("gb", 100) * 2**30

    monkeypatch.setattr(module.shutil, "disk_usage", Usage)
    return module, free


def test_one_file_system_for_everything_needs_venv_plus_wheels(space, tmp_path, monkeypatch, capsys):
    module, free = space
    monkeypatch.setattr(module.tempfile, "tempdir", str(tmp_path))  # TMPDIR, as tempfile reads it
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PIP_NO_CACHE_DIR", raising=False)
    free["gb"] = 9
    module.main(str(tmp_path / ".venv"))
    err = capsys.readouterr().err
    assert "9.0 GB free" in err and "about 10.5 GB are needed" in err and "pip's cache" in err
    free["gb"] = 11
    module.main(str(tmp_path / ".venv"))
    assert capsys.readouterr().err == ""


def test_no_pip_cache_leaves_the_cache_out(space, tmp_path, monkeypatch, capsys):
    module, free = space
    monkeypatch.setattr(module.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    free["gb"] = 5
    module.main(str(tmp_path / ".venv"))
    err = capsys.readouterr().err
    assert "pip's cache" not in err and "pip's temporary files" in err and os.fspath(tmp_path) in err
