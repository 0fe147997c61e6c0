"""The progress bar of every long command: on stderr and gone when done, so stdout stays clean for
``--json`` and pipes."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def bar(console: Console) -> Any:
    """A rich progress bar on ``console``: description, bar, done/total, elapsed and remaining time."""
    from rich import progress

    columns = (progress.TextColumn("{task.description}"), progress.BarColumn(), progress.MofNCompleteColumn(),
               progress.TimeElapsedColumn(), progress.TextColumn("eta"), progress.TimeRemainingColumn())  # fmt: skip
    return progress.Progress(*columns, console=console, transient=True)
