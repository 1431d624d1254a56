"""Progress bars (tqdm) and end-of-run summaries (rich tables) for the data_prep tools."""

from __future__ import annotations

import sys
from collections import Counter

from tqdm.auto import tqdm

#: Seconds between progress lines when stderr is not a terminal (a log file, `| cat`, a cluster job).
LOG_INTERVAL_S = 30.0


class _Lines:
    """A stream for tqdm that turns its carriage-return frames into whole lines (for logs and pipes)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable=None, desc: str = "", total: int | None = None, enabled: bool = True, leave: bool = False):
    """A tqdm bar in a terminal; elsewhere one progress line every :data:`LOG_INTERVAL_S` seconds (and at
    the end), never a stream of carriage-return frames."""
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, unit="img", disable=not enabled, leave=leave)
    return tqdm(iterable, desc=desc, total=total, unit="img", disable=not enabled, leave=True,
                file=_Lines(sys.stderr), mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S)


def summary(
    title: str, kept: int, dropped: list[dict], extra: dict | None = None, enabled: bool = True
) -> None:
    """Print kept/dropped counts per reason as a table."""
    if not enabled:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True)
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_row("kept", str(kept))
    for reason, n in sorted(Counter(d["reason"] for d in dropped).items()):
        table.add_row(f"dropped: {reason}", str(n))
    for k, v in (extra or {}).items():
        table.add_row(str(k), str(v))
    Console(stderr=True).print(table)
