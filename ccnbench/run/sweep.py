"""Sweeps: run a configuration's case groups (``plan.expand``), each in a fresh worker process.

A worker that crashes, hangs past its timeout or runs out of memory becomes results with a
status and a message; the sweep goes on. Every finished case is appended to the run's journal
(compacted into results.json at the end), an existing run is never overwritten, and ``resume`` finishes a run without redoing its cases.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ccnbench import environment, results
from ccnbench.answers import recommend
from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.results import CaseKey, CaseResult, RunResult
from ccnbench.roofline import case_roofs
from ccnbench.run import config as configuration
from ccnbench.run import contest, failures, plan, prebuild, worker
from ccnbench.run.config import SweepConfig
from ccnbench.run.plan import CaseGroup, unavailable_reason

# --- running ------------------------------------------------------------------------------------


@dataclass
class SweepEvents:
    """Callbacks for progress display; all optional."""

    on_total: Callable[[int], None] = lambda total: None
    on_group: Callable[[CaseGroup], None] = lambda group: None
    on_case: Callable[[CaseResult], None] = lambda case: None
    on_note: Callable[[str], None] = lambda text: None


def new_run_dir(base: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / f"{stamp}-{name}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = base / f"{stamp}-{name}-{suffix}"
    return path


def begin(
    flags: dict[str, Any], config_file: str | None, resume_dir: Path | None, out: Path | None
) -> tuple[RunResult, SweepConfig, Path]:
    """What ``bench`` runs, and where: a stored run to finish (``--resume``), or a new one from a
    sweep file or the flags (flag -> value, None when not given), in ``out`` or a new directory."""
    if resume_dir is not None:
        configuration.check_resume(flags, config_file, out)
        return (*resume(resume_dir), resume_dir)
    config = configuration.from_command_line(flags, config_file)
    run_dir = out or new_run_dir(Path("results"), config.name)
    return start(config, run_dir), config, run_dir


def closing_notes(run: RunResult, run_dir: Path) -> list[str]:
    """What to tell the user after a run: a shard is only a part, a spent budget leaves it open,
    and which answers its processes left inconclusive."""
    notes = []
    if run.config.get("shard"):
        notes.append(
            f"this is shard {run.config['shard']} of the sweep: report/compare/recommend take all its run "
            "directories together"
        )
    if not run.complete:
        notes.append(f"budget spent: the run is incomplete; finish it with --resume {run_dir}")
    open_ = recommend.unsettled_questions(run.cases)
    if open_:
        notes.append(
            f"still inconclusive: {', '.join(open_)} (`ccnbench recommend {run_dir}` says what each rests "
            "on; more processes settle them: `repeats`, or `max_repeats` and `extra_seconds`, under [protocol])"
        )
    return notes


def start(config: SweepConfig, run_dir: Path) -> RunResult:
    """Create a new run directory; an existing run is never overwritten."""
    if results.results_path(run_dir).exists():
        raise CcnbenchError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CcnbenchError(f"cannot create run directory {run_dir}: {exc.strerror}") from exc
    groups = plan.expand(config)  # fail on a bad config before anything is written
    if not groups and not config.shard:  # an empty shard (more parts than models) is a valid, empty part
        raise UsageError("the sweep expands to no cases")
    from ccnbench.backends.torch_eager import cuda_unavailable_reason
    from ccnbench.measure.timing import timer_overhead_ns

    wants_cuda = any(g.target.is_cuda for g in groups) and cuda_unavailable_reason() is None
    env = environment.collect(
        config.threads, timer_overhead_ns(), timer_overhead_ns(device="cuda") if wants_cuda else None
    )
    run = results.new_run(run_dir.name, env, config.to_dict())
    results.save(run, run_dir)
    return run


def resume(run_dir: Path) -> tuple[RunResult, SweepConfig]:
    run = results.load(run_dir)
    try:
        config = SweepConfig.from_dict(run.config, source=f"{run_dir} (stored config)")
    except (KeyError, TypeError, ValueError, UsageError) as exc:
        raise CcnbenchError(f"{run_dir}: the stored sweep configuration cannot be read: {exc}") from exc
    return run, config


def execute(
    run: RunResult,
    config: SweepConfig,
    run_dir: Path,
    events: SweepEvents | None = None,
    budget_seconds: float | None = None,
) -> RunResult:
    """Run every case group not yet in ``run`` in worker processes; save after every case.

    With ``budget_seconds`` (or ``CCNBENCH_DEADLINE``) the clock starts before the exports, and
    once it runs out the group in flight is killed and no new one starts: the run is saved as
    incomplete (the killed group's unfinished cases unrecorded) and ``resume`` finishes it later.
    """
    events = events or SweepEvents()
    writer = _RunWriter(run, run_dir, events)
    groups = plan.expand(config)
    done = _done_keys(run, groups)
    pending = [g for g in groups if not set(g.case_keys()) <= done]
    events.on_total(sum(len(g.batches) for g in groups))
    for case in run.cases:
        events.on_case(case)
    deadline = _deadline(budget_seconds)  # before the exports: they are part of the budget
    prebuild.export_artifacts(pending, events.on_note, deadline)
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    runnable = []
    for group in pending:
        # An unavailable target needs no worker: say why and move on.
        reason = unavailable_reason(group)
        if reason:
            for case in failures.unavailable(group, reason, [k for k in group.case_keys() if k not in done]):
                writer.record(case)
        else:
            runnable.append(_without(group, done))
    if case_roofs.enabled():
        # Counted and measured here, before any worker: nothing of it overlaps a timed block.
        writer.annotate = case_roofs.SweepRoofline(runnable, events.on_note).annotate
    contests, alone = contest.plan(runnable, run.tag)  # ids unique to this run
    for chain in contest_workers(contests, config.isolation):
        if deadline and time.monotonic() > deadline:
            break
        left = _run_contests(chain, config.timeout, logs, writer, deadline)
        alone += left  # members a crashed contest never reported: each gets its own worker
    for batch in _worker_batches(alone, config.isolation):
        if deadline and time.monotonic() > deadline:
            break
        _run_isolated(batch, config.timeout, logs, writer, deadline)
    finished = _done_keys(writer.run, groups)
    complete = all(set(g.case_keys()) <= finished for g in groups)
    writer.run = replace(writer.run, complete=complete)
    results.save(writer.run, run_dir)
    return writer.run


def _done_keys(run: RunResult, groups: Sequence[CaseGroup]) -> set[CaseKey]:
    """Cases that need nothing more: recorded, and for a case timed in a contest, with blocks from
    every one of its ``repeats`` processes (a contest cut between its processes is not complete)."""
    repeats = {k: max(1, g.protocol.repeats) if g.protocol else 1 for g in groups for k in g.case_keys()}
    return {c.key for c in run.cases if not _processes(c) or len(_processes(c)) >= repeats.get(c.key, 1)}


def _processes(case: CaseResult | None) -> set[int]:
    """The contest processes a case has blocks from (empty: not timed in a contest, or not ok)."""
    if case is None or case.status != "ok" or case.contest is None or case.latency is None:
        return set()
    return {b.process for b in case.latency.blocks}


class _RunWriter:
    """Holds the run and appends every finished case to its journal (compacted by ``results.save``)."""

    def __init__(self, run: RunResult, run_dir: Path, events: SweepEvents) -> None:
        self.run, self.run_dir, self.events = run, run_dir, events
        self.annotate: Callable[[CaseResult], CaseResult] = lambda case: case

    def record(self, case: CaseResult) -> None:
        case = self.annotate(case)
        self.run = self.run.with_case(case)
        results.append_case(self.run_dir, case)
        self.events.on_case(case)


def _without(group: CaseGroup, done: set[CaseKey]) -> CaseGroup:
    keep = tuple(k.batch for k in group.case_keys() if k not in done)
    return replace(group, batches=keep)


def _worker_batches(groups: Sequence[CaseGroup], isolation: str) -> list[list[CaseGroup]]:
    """'group': a fresh worker per group (exact memory figures). 'model': one worker per model and
    layout, running its targets one after another (far fewer process and CUDA start-ups).
    'device': one worker per kind of device for all of them."""
    if isolation == "group":
        return [[g] for g in groups]
    if isolation == "device":
        by_device: dict[str, list[CaseGroup]] = {}
        for g in groups:
            by_device.setdefault(g.target.device_kind, []).append(g)
        return list(by_device.values())
    batches: dict[tuple[str, str, str], list[CaseGroup]] = {}
    for g in groups:
        batches.setdefault((g.source.label, g.source.digest, g.source.layout), []).append(g)
    return list(batches.values())


def contest_workers(
    contests: Sequence[contest.Contest], isolation: str = "group"
) -> list[list[contest.Contest]]:
    """Contests that share worker processes, one after another: every contest of one model on one
    kind of device (its precisions, its batch buckets), so a model pays one process and CUDA
    start-up per repeat, not one per precision; with isolation 'device', every contest on that
    device (a time-boxed GPU that cannot pay six seconds of start-up per model)."""
    chains: dict[tuple[str, ...], list[contest.Contest]] = {}
    for match in contests:
        g = match.groups[0]
        key = (
            (g.target.device_kind,)
            if isolation == "device"
            else (g.source.label, g.source.digest, g.target.device_kind)
        )
        chains.setdefault(key, []).append(match)
    return list(chains.values())


def _run_contests(
    chain: list[contest.Contest], timeout: float, logs: Path, writer: _RunWriter, deadline: float | None
) -> list[CaseGroup]:
    """Run a chain of contests in fresh workers, one after another, merging each case's blocks:
    ``repeats`` workers of the whole chain (process k of each contest), then, up to
    ``max_repeats``, one worker at a time for the contests whose answer ``recommend`` still calls
    inconclusive, as many of them as fit in what is left of ``extra_seconds``. Near-ties get the
    processes that settle them; clear answers do not pay for them.

    Returns the members to run alone: those the first process never reported because it died.
    Each contest gets ``timeout`` per member, as a worker per group would.
    """
    protocol = chain[0].groups[0].protocol
    repeats = max(1, protocol.repeats if protocol else 1)
    extra = max(0, (protocol.max_repeats if protocol else 0) - repeats)
    members = [g for match in chain for g in match.groups]
    per_contest = timeout * max(len(match.groups) for match in chain)
    # A resumed chain keeps every block it has and runs as many fresh processes as its
    # least-measured member lacks, numbered after the existing ones (blocks pair by process).
    recorded = {c.key: _processes(c) for c in writer.run.cases}
    keys = [k for g in members for k in g.case_keys()]
    merged = {c.key: c for c in writer.run.cases if c.key in keys and recorded[c.key]}
    process = 1 + max((p for k in keys for p in recorded.get(k, ())), default=-1)
    base = repeats - min((len(recorded.get(k, ())) for k in keys), default=0)
    budget = _ExtraBudget(protocol.extra_seconds if protocol else 0.0)
    for n in range(max(0, base) + extra):
        todo = chain if n < base else budget.fit(_unsettled(chain, writer), writer.events.on_note)
        if not todo or (deadline and time.monotonic() > deadline):
            break
        payload = {"contests": [match.to_dict() for match in todo], "process": process,
                   "checked": [match.id for match in todo if _checked(match, merged)]}  # fmt: skip
        log_path = logs / f"{_safe(todo[0].id)}-p{process}.log"
        firsts = [match.groups[0] for match in todo]
        started = time.monotonic()
        outcome, code, _, seen = _spawn(payload, firsts, per_contest, log_path, writer, deadline, merged)
        budget.took(time.monotonic() - started, len(todo), extra=n >= base)
        process += 1
        if outcome == "exited" and code == 0:
            continue
        if outcome == "deadline":
            break
        ending = worker.ending(outcome, code, per_contest, log_path)[1]
        writer.events.on_note(f"{todo[0].label}: process {process - 1} {ending}")
        if n == 0:
            return [g for g in members if not set(g.case_keys()) <= seen | set(merged)]
        break  # later processes only add rounds: keep what the earlier ones measured
    return []


def _checked(match: contest.Contest, merged: dict[CaseKey, CaseResult]) -> bool:
    """Every case of the contest has a result from an earlier process (agreement and memory,
    or the failure): a later process only adds rounds."""
    return all(k in merged for g in match.groups for k in g.case_keys())


def _unsettled(chain: list[contest.Contest], writer: _RunWriter) -> list[tuple[contest.Contest, int]]:
    """The contests of ``chain`` with a question still inconclusive, each with how many."""
    open_ = []
    for match in chain:
        keys = {k for g in match.groups for k in g.case_keys()}
        questions = recommend.unsettled_questions([c for c in writer.run.cases if c.key in keys])
        if questions:
            open_.append((match, len(questions)))
    return open_


class _ExtraBudget:
    """What is left of a chain's ``extra_seconds`` for processes beyond ``repeats``, and which of
    the open contests an extra process can take within it: as many as fit at the seconds per
    contest the chain's last process took (the first process, which also grades agreement and
    takes memory, only until a timing-only one has run). ``seconds`` 0: no limit."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.spent, self.per_contest = seconds, 0.0, 0.0

    def took(self, seconds: float, contests: int, extra: bool) -> None:
        self.per_contest = seconds / max(1, contests)
        self.spent += seconds if extra else 0.0

    def fit(
        self, open_: list[tuple[contest.Contest, int]], note: Callable[[str], None]
    ) -> list[contest.Contest]:
        """The open contests one more process takes (in chain order), each announced."""
        take = len(open_)
        if self.seconds > 0 and self.per_contest > 0:
            take = min(take, int((self.seconds - self.spent) / self.per_contest))
        for match, questions in open_[:take]:
            note(f"{match.label}: {questions} question(s) inconclusive: one more process")
        if take < len(open_):
            left = ", ".join(match.label for match, _ in open_[take:])
            note(
                f"still inconclusive, no time left for another process (extra_seconds = {self.seconds:g}): {left}"
            )
        return [match for match, _ in open_[:take]]


def _spawn(
    payload: Any,
    groups: list[CaseGroup],
    timeout: float,
    log_path: Path,
    writer: _RunWriter,
    deadline: float | None,
    merged: dict[CaseKey, CaseResult] | None = None,
) -> tuple[str, int | None, int | None, set[CaseKey]]:
    """One worker on ``payload``: (outcome, exit code, the group it was running, cases it reported)."""
    with worker.launched(payload, log_path) as (proc, out):
        outcome, current, seen = _follow(proc, out, groups, timeout, writer, deadline, merged)
    return outcome, proc.returncode, current, seen


def _run_isolated(
    groups: list[CaseGroup], timeout: float, logs: Path, writer: _RunWriter, deadline: float | None
) -> None:
    """Run groups in ``python -m ccnbench.run.worker``; a crash or a hang ends only the group it hit.

    The worker announces each group before running it, so when it dies or overruns the group's
    timeout, that group's missing cases get the status and the rest go to a fresh worker.
    """
    remaining = list(groups)
    while remaining:
        log_path = logs / f"{_safe(remaining[0].label)}.log"
        payload = [g.to_dict() for g in remaining]
        outcome, code, current, seen = _spawn(payload, remaining, timeout, log_path, writer, deadline)
        if outcome == "exited" and code == 0:
            return
        if outcome == "deadline":
            return  # the rest stays unrecorded: `resume` runs it
        index = current if current is not None else 0
        status, message = worker.ending(outcome, code, timeout, log_path)
        group = remaining[index]
        for case in failures.failed(
            group, message, [k for k in group.case_keys() if k not in seen], status=status
        ):
            writer.record(case)
        remaining = remaining[index + 1 :]


def _follow(
    proc: subprocess.Popen[bytes],
    out: Path,
    groups: list[CaseGroup],
    timeout: float,
    writer: _RunWriter,
    deadline: float | None,
    merged: dict[CaseKey, CaseResult] | None = None,
) -> tuple[str, int | None, set[CaseKey]]:
    """Relay the worker's events until it exits, overruns a group's timeout, or the budget ends.

    With ``merged`` (a contest's later processes) each case is merged with what the earlier
    processes recorded for it before it is saved.
    """
    offset, current, started = 0, None, time.monotonic()
    seen: set[CaseKey] = set()
    try:
        while True:
            exited = proc.poll() is not None  # before reading: a finished worker's last lines are in
            offset, events = worker.read_events(out, offset)
            for event in events:
                if "group" in event:
                    current, started = int(event["group"]), time.monotonic()
                    writer.events.on_group(groups[current])
                elif "case" in event:
                    case = CaseResult.from_dict(event["case"])
                    seen.add(case.key)
                    if merged is not None:
                        case = merged[case.key] = contest.merge_processes(merged.get(case.key), case)
                    writer.record(case)
            if exited:
                return "exited", current, seen
            if deadline and time.monotonic() > deadline:  # the group in flight stops too
                worker.kill(proc)
                return "deadline", current, seen
            if time.monotonic() - started > timeout:
                worker.kill(proc)
                return "timeout", current, seen
            time.sleep(0.05)
    except BaseException:  # Ctrl-C: never leave a worker running behind us
        worker.kill(proc)
        raise


def _deadline(budget_seconds: float | None) -> float | None:
    """The monotonic deadline: ``budget_seconds`` from now and/or ``CCNBENCH_DEADLINE`` (Unix
    time), whichever comes first. The variable lets one deadline span several sweeps (stages)."""
    ends = [time.monotonic() + budget_seconds] if budget_seconds else []
    env = os.environ.get("CCNBENCH_DEADLINE")
    if env:
        try:
            ends.append(time.monotonic() + float(env) - time.time())
        except ValueError as exc:
            raise UsageError(f"CCNBENCH_DEADLINE must be a Unix time in seconds, got {env!r}") from exc
    return min(ends) if ends else None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
