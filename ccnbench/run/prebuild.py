"""Every artifact a sweep needs (ONNX files, .pt2 packages), built once before any worker starts."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from ccnbench.backends import backend_of
from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.run.plan import CaseGroup, unavailable_reason


def export_artifacts(
    groups: Sequence[CaseGroup], on_note: Callable[[str], None], deadline: float | None = None
) -> None:
    """Build every artifact (ONNX file, .pt2 package) once, before any worker starts.

    Workers then only read them, so no two processes write one file and export or build time
    (half a minute for a .pt2 package) is not charged to any worker's timeout. On a machine with
    cores to spare the builds run in parallel processes (``export_jobs``): a GPU check exports
    some thirty medium ONNX files, each a single-threaded trace. A user's factory is exported
    inside its worker instead, so a broken one cannot take the sweep down. Failures are left for
    the worker to report.
    """
    wanted = {}
    for g in groups:
        fmt = backend_of(g.target).file_format
        if fmt and g.source.kind == "spec" and unavailable_reason(g) is None:
            key = (fmt, g.source.digest, g.source.layout, g.precision, g.target.device_kind)
            wanted.setdefault(key, g)
    jobs = export_jobs(len(wanted))
    if jobs > 1:
        _export_in_parallel(list(wanted.items()), jobs, on_note, deadline)
        return
    for (fmt, *_), g in wanted.items():
        if deadline and time.monotonic() > deadline:
            return
        on_note(f"building {fmt} for {g.source.label} {g.source.layout} {g.precision}")
        with contextlib.suppress(CcnbenchError):
            backend_of(g.target).artifact(g.source, g.target, g.options)


def export_jobs(count: int) -> int:
    """Parallel build processes: ``CCNBENCH_EXPORT_JOBS``, else half the cores (a build uses more
    than one thread at times), never more than there are builds."""
    env = os.environ.get("CCNBENCH_EXPORT_JOBS")
    try:
        jobs = int(env) if env else (os.cpu_count() or 1) // 2
    except ValueError as exc:
        raise UsageError(f"CCNBENCH_EXPORT_JOBS must be a whole number, got {env!r}") from exc
    return max(1, min(jobs, count))


def _export_in_parallel(
    wanted: list[tuple[tuple[str, ...], CaseGroup]],
    jobs: int,
    on_note: Callable[[str], None],
    deadline: float | None,
) -> None:
    """The builds in ``jobs`` spawned processes; at the deadline the ones still running are killed."""
    on_note(f"building {len(wanted)} artifacts in {jobs} processes")
    tasks = [(key[0], g.source.label, g.source.layout, g.precision, g.to_dict()) for key, g in wanted]
    pool = multiprocessing.get_context("spawn").Pool(jobs)
    try:
        done = pool.imap_unordered(_build_task, tasks)
        for _ in tasks:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise multiprocessing.TimeoutError
            on_note(done.next(timeout=left))
        pool.close()
    except multiprocessing.TimeoutError:
        on_note("deadline: the builds still running are stopped")
    finally:
        pool.terminate()
        pool.join()


def _build_task(task: tuple[str, str, str, str, dict[str, Any]]) -> str:
    fmt, label, layout, precision, group = task
    build_artifact(group)
    return f"built {fmt} for {label} {layout} {precision}"


def build_artifact(group: dict[str, Any]) -> None:
    """One artifact of a case group (a parallel build process's task); failures stay silent
    here and are reported by the group's worker."""
    g = CaseGroup.from_dict(group)
    with contextlib.suppress(CcnbenchError):
        backend_of(g.target).artifact(g.source, g.target, g.options)
