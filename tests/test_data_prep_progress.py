"""data_prep's progress: a bar in a terminal, whole lines (no carriage-return frames) in a log or pipe."""

from __future__ import annotations

import io

from data_prep import progress


def test_progress_outside_a_terminal_is_whole_lines(monkeypatch):
    err = io.StringIO()  # not a terminal
    monkeypatch.setattr(progress.sys, "stderr", err)
    for _ in progress.bar(range(5), "ingest"):
        pass
    out = err.getvalue()
    assert "\r" not in out and out.endswith("\n")
    assert "ingest" in out and "5/5" in out.splitlines()[-1]
