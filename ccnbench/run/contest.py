"""Contests: every format of one model timed side by side in one process, in interleaved rounds.

A comparison made between two processes at two moments inherits the machine's drift, and on a
shared machine that drift is larger than the effects ccnbench reports. A contest takes the
case groups of one model (same label and digest: kept and merged alike) at one precision on
one kind of device (int8 files with the fp32 ones: ``plan.contest_precision``), prepares every member once in one worker, and then:

1. **agreement, then memory**, before any timing: every runtime the contest uses is warmed
   first (``case_group.warm_runtimes``: CUDA context, library handles, thread pools, imports), so
   no member's build time or memory pays one-time costs; members are prepared and checked in a
   seeded shuffled order (``memory_order``); then the **memory pass** prepares each member once
   more against its own baseline (``case_group.measure_memory``), when every member has already
   run at every batch size, so no figure depends on which member went first;
2. **timing**, per batch size: rounds in which each member runs one block of about
   ``block_seconds`` (first call discarded unless one call fills the block), in a seeded
   order that changes every round, until
   every ratio to its reference (eager PyTorch on that device, same layout; merged vs kept on
   the same target) has a 95 % interval within +-``target_width`` or ``contest_seconds`` is
   spent.

The sweep repeats a contest in ``repeats`` fresh processes (``process`` numbers them) and
merges their blocks; ``ccnbench.answers.stats`` turns the blocks into intervals.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ccnbench.answers import stats
from ccnbench.backends import backend_of
from ccnbench.backends.base import Runner
from ccnbench.backends.settings import ProcessSettings, applied
from ccnbench.formats.int8 import is_int8
from ccnbench.measure.memory import long_lived_frozen
from ccnbench.measure.timing import Block, LatencyStats, Protocol, bound_call, stage, time_block, warm_up
from ccnbench.results import CaseResult
from ccnbench.run import case_group, failures
from ccnbench.run.plan import CaseGroup, contest_key, contest_precision, unavailable_reason


@dataclass(frozen=True)
class Contest:
    id: str
    groups: tuple[CaseGroup, ...]

    @property
    def label(self) -> str:
        g = self.groups[0]
        return f"{g.source.label} {g.precision} {g.target.device_kind} contest ({len(self.groups)} formats)"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "groups": [g.to_dict() for g in self.groups]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Contest:
        return cls(data["id"], tuple(CaseGroup.from_dict(g) for g in data["groups"]))


def plan(groups: Sequence[CaseGroup], run: str = "") -> tuple[list[Contest], list[CaseGroup]]:
    """Contests of two or more timed members that may share a process, and the groups left alone.

    A contest's id is unique per run (``run`` names it: a resumed run passes the same name and
    finds its contests again) and per batch bucket, so no two contests' blocks ever pair."""
    buckets: dict[tuple[str, ...], list[CaseGroup]] = {}
    alone: list[CaseGroup] = []
    for g in groups:
        protocol = g.protocol
        if protocol is None or not protocol.contest or not backend_of(g.target).shares_process:
            alone.append(g)
        else:
            buckets.setdefault((*contest_key(g), str(g.batches)), []).append(g)
    contests = []
    for key, members in buckets.items():
        if len(members) < 2:
            alone += members
        else:
            label, digest, precision, device = key[:4]
            batches = "-".join(map(str, members[0].batches))
            ident = f"{label}/{digest[:8]}/{precision}/{device}/b{batches}"
            contests.append(Contest(f"{ident}/{_nonce(run)}" if run else ident, tuple(members)))
    return contests, alone


def _nonce(run: str) -> str:
    return hashlib.sha256(run.encode()).hexdigest()[:8]


def merge_processes(old: CaseResult | None, new: CaseResult) -> CaseResult:
    """One case from several processes of a contest: their blocks together; memory, build cost and
    agreement from the first process (they do not change between processes)."""
    if old is None or old.latency is None or new.latency is None or old.status != "ok":
        return new if old is None or old.status != "ok" else old
    blocks = old.latency.blocks + new.latency.blocks
    latency = LatencyStats.from_blocks(
        blocks,
        old.latency.batch,
        old.latency.clock,
        flops_per_sample=old.latency.flops_per_sample,
        warmup_iterations=old.latency.warmup_iterations,
    )
    return replace(old, latency=latency)


@dataclass(eq=False)  # members are dict keys by identity
class _Member:
    group: CaseGroup
    runner: Any
    inputs: dict[int, Any]
    flops: int | None
    results: dict[int, CaseResult]
    prepared: case_group.Prepared
    settings: ProcessSettings | None = None  # what the process had right after this member was prepared


def run_contest(contest: Contest, process: int = 0, checked: bool = False) -> Iterator[CaseResult]:
    """Yield a CaseResult per member and batch size (failures included), timing last.

    ``checked``: an earlier process of this contest has graded agreement and taken memory, which
    do not change between processes (``merge_processes`` keeps the first process's), so this one
    only times: each member is prepared and warmed, and its results carry latency alone."""
    baseline = ProcessSettings.read()
    with contextlib.ExitStack() as stack:
        stack.callback(baseline.apply)  # the process gets its own settings back after the contest
        case_group.warm_runtimes(contest.groups)
        stack.enter_context(long_lived_frozen())  # after the imports: each collection then costs ~0
        members: list[_Member] = []
        for index in memory_order(contest, process):
            baseline.apply()  # prepared from the process's settings, not the previous member's
            member, early = _prepare(contest.groups[index], contest.id, stack, checked)
            if member is not None:
                member.settings = ProcessSettings.read()  # its threads, TF32, cuDNN autotuning
                members.append(member)
            baseline.apply()
            yield from early
        if not checked:
            _memory_pass(contest, members, process, baseline)
        batches = contest.groups[0].batches
        for batch in batches:
            alive = [m for m in members if m.results.get(batch) and m.results[batch].status == "ok"]
            timed = _rounds(alive, batch, process) if len(alive) else {}
            for m in members:
                result = m.results.get(batch)
                if result is None:
                    continue
                if m in timed:
                    result = replace(result, latency=timed[m])
                yield result


def memory_order(contest: Contest, process: int) -> list[int]:
    """The order members are prepared (and their memory taken) in one process of a contest:
    shuffled, seeded by the contest and the process, so no member is always first and a rerun
    repeats the order."""
    order = list(range(len(contest.groups)))
    random.Random(f"{contest.id}/memory/{process}").shuffle(order)
    return order


def _memory_pass(contest: Contest, members: list[_Member], process: int, baseline: ProcessSettings) -> None:
    """Replace each member's memory by its own-baseline figure (``case_group.measure_memory``), in
    the seeded shuffled order, once every member has run at every batch size."""
    protocol = contest.groups[0].protocol
    enabled = protocol is None or protocol.memory_pass
    by_group = {id(m.group): m for m in members}
    for index in memory_order(contest, process):
        m = by_group.get(id(contest.groups[index]))
        if m is None:
            continue
        note: dict[str, Any] = {"memory_pass": "own" if enabled else "first-preparation"}
        memory = {}
        if enabled:
            try:
                baseline.apply()  # prepared again from the process's settings, as the first time
                memory = case_group.measure_memory(m.prepared)
            except Exception as exc:  # the first preparation's figure stays, marked
                note = {"memory_pass": "first-preparation", "memory_pass_error": failures.describe(exc)}
        for batch, result in m.results.items():
            figure = memory.get(batch, result.memory)
            m.results[batch] = replace(result, memory=figure, details={**result.details, **note})


def _prepare(
    group: CaseGroup, contest_id: str, stack: contextlib.ExitStack, checked: bool = False
) -> tuple[_Member | None, list[CaseResult]]:
    """Build one member and run its memory + agreement pass (not when ``checked``: a timing-only
    result per batch size); failures become results."""
    reason = unavailable_reason(group)
    if reason:
        return None, failures.unavailable(group, reason, contest=contest_id)
    try:
        prepared = case_group.prepare(group, timing_only=checked)
        stack.enter_context(prepared.runner)
    except Exception as exc:
        return None, failures.failed(group, f"prepare: {failures.describe(exc)}", contest=contest_id)
    results: dict[int, CaseResult] = {}
    early: list[CaseResult] = []
    check = case_group.timing_case if checked else case_group.check_case
    for key, batch in zip(group.case_keys(), group.batches):
        try:
            results[batch] = check(prepared, key, batch, contest_id)
        except Exception as exc:
            message = f"batch {batch}: {failures.describe(exc)}"
            early += failures.failed(group, message, [key], contest=contest_id, artifact=prepared.artifact)
    return _Member(group, prepared.runner, prepared.inputs, prepared.flops, results, prepared), early


def partners(members: Sequence[Any]) -> list[tuple[int, int]]:
    """(member, reference) index pairs a contest must resolve: each format against eager PyTorch on
    the same device and layout, merged against kept on the same target, and an int8 file against
    the fp32 file it was made from (same target and layout: "int8 is N x fp32", paired)."""
    index = {_slot(m.group): i for i, m in enumerate(members)}
    pairs = []
    for i, m in enumerate(members):
        target, layout, fmt, precision = _slot(m.group)
        ref = index.get((str(m.group.target.reference), layout, fmt, contest_precision(precision)))
        if ref is not None and ref != i:
            pairs.append((i, ref))
        if layout == "merged" and (target, "kept", fmt, precision) in index:
            pairs.append((i, index[(target, "kept", fmt, precision)]))
        if fmt != "contiguous" and (target, layout, "contiguous", precision) in index:  # what the format buys
            pairs.append((i, index[(target, layout, "contiguous", precision)]))
        if is_int8(precision) and (target, layout, fmt, "fp32") in index:
            pairs.append((i, index[(target, layout, fmt, "fp32")]))
    return pairs


def _slot(group: CaseGroup) -> tuple[str, str, str, str]:
    """A member's place in its contest: target, layout, memory format and precision (an int8
    contest holds its fp32 members too)."""
    return (str(group.target), group.source.layout, group.options.memory_format, group.precision)


def converged(fastest: Sequence[Sequence[float]], pairs: Sequence[tuple[int, int]], width: float) -> bool:
    """Every pair's ratio over this process's rounds (each block's fastest call, paired by round)
    has a 95 % interval within +-width (the within-process interval of ``stats.paired_ratio``,
    the one a one-process result shows)."""
    for a, b in pairs:
        logs = np.log(np.asarray(fastest[a]) / np.asarray(fastest[b]))
        point, low, high, _ = stats.within_interval(logs[None, :])
        half = max(high[0] - point[0], point[0] - low[0])
        if not math.isfinite(half) or math.expm1(half) > width:
            return False
    return True


def _rounds(members: list[_Member], batch: int, process: int) -> dict[_Member, LatencyStats]:
    """Warm every member up under its own settings, then time them in ``interleave``'s rounds."""
    protocol = members[0].group.protocol
    assert protocol is not None
    calls = []
    for m in members:
        call = bound_call(m.runner, stage(m.inputs[batch], m.runner))
        with _own_settings(m):
            warm_up(call, m.runner, protocol)
        calls.append(call)
    blocks = interleave(
        calls,
        [m.runner for m in members],
        partners(members),
        protocol,
        batch,
        process,
        around=lambda i: _own_settings(members[i]),
    )
    return {
        m: LatencyStats.from_blocks(
            blocks[i],
            batch,
            "cuda_events" if m.runner.is_cuda else "perf_counter",
            flops_per_sample=m.flops,
            warmup_iterations=protocol.warmup_iterations,
        )
        for i, m in enumerate(members)
    }


def interleave(
    calls: Sequence[Callable[[], object]],
    runners: Sequence[Runner],
    pairs: Sequence[tuple[int, int]],
    protocol: Protocol,
    batch: int,
    process: int,
    around: Callable[[int], contextlib.AbstractContextManager[object]] | None = None,
    known_ms: Sequence[float | None] | None = None,
) -> list[list[Block]]:
    """Time warmed-up ``calls`` side by side: the blocks of each, one per round.

    Each round runs one ``time_block`` of every member (``runners[i]`` chooses the clock) in an
    order shuffled anew, so no member always follows the same one and drift is shared by all;
    ``settle`` comes before every block, so no member is timed against its predecessor's spinning
    threads. Rounds stop once ``min_rounds`` ran and either ``contest_seconds`` is spent or every
    ``pairs`` ratio ``converged``. The shuffle is seeded by ``process`` and ``batch``, so a rerun
    repeats the order. ``around(i)`` is entered for each block of member ``i`` (its own
    process-wide settings, in a contest). Garbage collection is off inside the rounds (a
    collection inside a block is the harness's pause, not the model's) and runs between them.
    ``known_ms[i]``: how long one call of member ``i`` is already known to take (its warm-up's),
    read by its first block as a later block reads the one before (``time_block``'s ``previous_ms``).
    """
    order = list(range(len(calls)))
    known = list(known_ms) if known_ms is not None else [None] * len(calls)
    rng = random.Random(process * 100_003 + batch)
    blocks: list[list[Block]] = [[] for _ in calls]
    medians: list[list[float]] = [[] for _ in calls]
    fastest: list[list[float]] = [[] for _ in calls]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    try:
        round_ = 0
        while True:
            rng.shuffle(order)
            for i in order:
                settle(protocol.settle_seconds)
                with around(i) if around is not None else contextlib.nullcontext():
                    previous = medians[i][-1] if medians[i] else known[i]
                    block = time_block(
                        calls[i], runners[i], protocol.block_seconds, process, round_, previous
                    )
                blocks[i].append(block)
                medians[i].append(block.median)
                fastest[i].append(block.fastest)
            round_ += 1
            if round_ >= protocol.min_rounds and (
                time.perf_counter() - start >= protocol.contest_seconds
                or converged(fastest, pairs, protocol.target_width)
            ):
                break
            # Between rounds, outside every block, the youngest generation only: the rounds' garbage
            # is young, and a full collection costs ~80 ms once torch is loaded (2 s of a 15 s contest).
            gc.collect(0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return blocks


# settle(): the process counts as idle once its CPU time grows by less than a quarter of the wall
# time over three consecutive 2 ms windows (a sleeping main thread and sleeping pools use ~nothing).
_SETTLE_WINDOW = 0.002
_SETTLE_QUIET_WINDOWS = 3
_SETTLE_BUSY_FRACTION = 0.25


def settle(limit: float) -> float:
    """Wait (at most ``limit`` seconds) until the threads of the member timed before are idle.

    After its last call a runtime's threads keep spinning for a while: ONNX Runtime's intra-op
    pool (measured here: ~0.1 s of CPU time after a run on a loaded 2-core machine; up to seconds
    on some CPUs), OpenMP (PyTorch) and TBB (OpenVINO) workers less. The next member's block
    would compete with them for the cores. Turning spinning off would change what a user deploys,
    so the contest waits instead, watching the process's CPU time (every thread's) stand still.
    Returns the seconds waited.
    """
    start = time.perf_counter()
    if limit <= 0:
        return 0.0
    quiet, wall, cpu = 0, start, time.process_time()
    while quiet < _SETTLE_QUIET_WINDOWS and wall - start < limit:
        time.sleep(_SETTLE_WINDOW)
        now_wall, now_cpu = time.perf_counter(), time.process_time()
        busy = (now_cpu - cpu) / max(now_wall - wall, 1e-9)
        quiet = quiet + 1 if busy < _SETTLE_BUSY_FRACTION else 0
        wall, cpu = now_wall, now_cpu
    return wall - start


def _own_settings(member: _Member) -> contextlib.AbstractContextManager[None]:
    """The member's process-wide settings while it runs (see ccnbench.backends.settings)."""
    return applied(member.settings) if member.settings is not None else contextlib.nullcontext()
