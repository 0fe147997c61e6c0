"""Worker process of a sweep: ``python -m ccnbench.run.worker TASK.json EVENTS.jsonl``, and the
parent's side of it (``launched``, ``read_events``, ``kill``, ``ending``), so the event format
is written and read in one module.

The task is a list of case groups, run in order, or ``{"contests": [...], "process": k,
"checked": [ids]}``: process k of each contest (see contest.py), one after another, each
announced as a group; the contests in ``checked`` only time (an earlier process graded them).
Before each group it appends ``{"group": i}``, after
each case ``{"case": {...}}``; every line is flushed and fsynced, so the parent keeps every
finished case and knows which group was running if this process dies.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ccnbench.run.case_group import run_group
from ccnbench.run.contest import Contest, run_contest
from ccnbench.run.plan import CaseGroup


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
        checked = set(data.get("checked", ()))  # contests an earlier process graded: timing only
        with out.open("a") as f:
            for index, contest in enumerate(contests):
                _emit(f, {"group": index})
                match = Contest.from_dict(contest)
                for result in run_contest(match, int(data.get("process", 0)), match.id in checked):
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


@contextlib.contextmanager
def launched(payload: Any, log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A worker on ``payload`` (case groups or contests) in its own process group, its output in
    ``log_path``: yields the process and the events file it appends to."""
    with tempfile.TemporaryDirectory(prefix="ccnbench-worker-") as tmp:
        task, out = Path(tmp) / "task.json", Path(tmp) / "results.jsonl"
        task.write_text(json.dumps(payload))
        out.touch()
        with log_path.open("w") as log:
            yield (
                subprocess.Popen(
                    [sys.executable, "-m", "ccnbench.run.worker", str(task), str(out)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: a timeout kills its children too
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                ),
                out,
            )


def read_events(path: Path, offset: int) -> tuple[int, list[dict[str, Any]]]:
    """Complete JSON lines the worker appended since ``offset`` (a partial line waits)."""
    events = []
    with path.open("rb") as f:
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                events.append(json.loads(line))
    return offset, events


def kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def ending(outcome: str, code: int | None, timeout: float, log_path: Path) -> tuple[str, str]:
    if outcome == "timeout":
        return "timeout", f"worker exceeded the {timeout:g} s timeout and was killed"
    tail = _last_line(log_path)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return "failed", f"worker killed by {name}{hint}" + (f": {tail}" if tail else "")
    return "failed", f"worker exited with code {code} before finishing" + (f": {tail}" if tail else "")


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
