"""Progress bars (tqdm) and end-of-run summaries (rich tables) for the data_prep tools."""

from __future__ import annotations

from collections import Counter

from tqdm.auto import tqdm


def bar(iterable, desc: str, total: int | None = None, enabled: bool = True):
    return tqdm(iterable, desc=desc, total=total, unit="img", disable=not enabled, leave=False)


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
