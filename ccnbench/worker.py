"""Worker process of a sweep: ``python -m ccnbench.worker TASK.json EVENTS.jsonl``.

The task is a list of case groups, run in order, or ``{"contests": [...], "process": k}``:
process k of each contest (see contest.py), one after another, each announced as a group. Before each group it appends ``{"group": i}``, after
each case ``{"case": {...}}``; every line is flushed and fsynced, so the parent keeps every
finished case and knows which group was running if this process dies.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from ccnbench.contest import Contest, run_contest
from ccnbench.execute import run_group
from ccnbench.plan import CaseGroup


def _emit(f: IO[str], event: dict[str, Any]) -> None:
    f.write(json.dumps(event, allow_nan=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _release_device_memory() -> None:
    """Between groups: drop the last runner's cached device memory so the next one starts clean."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def main(argv: list[str]) -> int:
    task, out = Path(argv[0]), Path(argv[1])
    data = json.loads(task.read_text())
    if isinstance(data, dict) and ("contest" in data or "contests" in data):
        contests = data.get("contests") or [data["contest"]]
        with out.open("a") as f:
            for index, contest in enumerate(contests):
                _emit(f, {"group": index})
                for result in run_contest(Contest.from_dict(contest), int(data.get("process", 0))):
                    _emit(f, {"case": result.to_dict()})
                _release_device_memory()
        return 0
    groups = [CaseGroup.from_dict(g) for g in data]
    with out.open("a") as f:
        for index, group in enumerate(groups):
            _emit(f, {"group": index})
            for result in run_group(group):
                _emit(f, {"case": result.to_dict()})
            _release_device_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
