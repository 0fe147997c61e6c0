"""Run one case group: prepare a runner once, then check (and optionally time) every batch size.

This is what a worker process does in a sweep and what ``ccnbench check`` does in-process.
Every failure becomes a CaseResult with a status and a message; nothing here raises for a
broken backend, so one bad target never stops the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ccnbench.backends import Runner, backend_of
from ccnbench.formats.int8 import is_int8
from ccnbench.measure import int8_grading
from ccnbench.measure.agreement import TolerancePolicy, compare
from ccnbench.measure.memory import MemoryProbe, MemoryStats
from ccnbench.measure.oracle import reference
from ccnbench.measure.timing import measure, stage
from ccnbench.results import CaseKey, CaseResult
from ccnbench.run import failures
from ccnbench.run.plan import CaseGroup, unavailable_reason


@dataclass
class Prepared:
    """A built runner and what its cases are checked with: seeded inputs and oracle outputs per
    batch size, the FLOP count, the artifact it loaded, and the memory probe started before it
    (no oracle outputs and no probe when prepared only to be timed)."""

    group: CaseGroup
    runner: Runner
    inputs: dict[int, tuple[Tensor, ...]]
    expected: dict[int, tuple[Tensor, ...]]
    flops: int | None
    artifact: Any
    probe: MemoryProbe | None
    # int8: (inputs, oracle outputs) of the evaluation set its cases are graded on instead.
    evaluation: tuple[tuple[Tensor, ...], tuple[Tensor, ...]] | None = None


def warm_runtimes(groups: Sequence[CaseGroup]) -> None:
    """Pay the one-time costs of every runtime these groups use (``Backend.warm``) before any
    memory baseline or build timer starts. A runtime that fails here is left to fail, with its
    message, when its group is prepared."""
    seen: set[tuple[str, str]] = set()
    for g in groups:
        key = (g.target.backend, g.target.device)
        if key in seen or unavailable_reason(g):
            continue
        seen.add(key)
        with contextlib.suppress(Exception):
            backend_of(g.target).warm(g.target.device, g.options)


def prepare(group: CaseGroup, timing_only: bool = False) -> Prepared:
    """Build the group's runner (raises on failure). Shared by ``run_group`` and contests.

    The oracle's float64 pass and the FLOP count run before the memory probe starts, so neither
    is charged to the target's memory. ``timing_only`` (a contest's later process, which neither
    grades nor measures memory) skips the oracle and the probe, whose start (a full garbage
    collection and a heap trim) cost ~0.14 s per member.
    """
    backend = backend_of(group.target)
    inputs = {b: group.source.make_inputs(b, group.seed) for b in group.batches}
    expected = {}
    if not timing_only:
        expected = {
            b: reference(group.source, x, b, group.seed, group.options.artifacts_dir)
            for b, x in inputs.items()
        }
    flops = group.source.flops_per_sample()
    # The file the target loads (ONNX, .pt2), built in the sweep's parent and reused here.
    artifact = backend.artifact(group.source, group.target, group.options)
    probe = None if timing_only else MemoryProbe(group.target.device_kind)
    if probe is not None:
        probe.start()
    evaluation = None
    if is_int8(group.precision) and not timing_only:  # the oracle's pass is not the target's memory
        evaluation = int8_grading.evaluation_set(group.source, group.seed, group.options.eval_inputs)
    runner = backend.prepare(group.source, group.target, group.options)
    return Prepared(group, runner, inputs, expected, flops, artifact, probe, evaluation)


def check_case(prepared: Prepared, key: CaseKey, batch: int, contest: str | None = None) -> CaseResult:
    """Run one batch, grade it against the oracle and read the memory probe (raises on failure).

    Memory is read after a second call, the first call's one-time transients dropped in between
    (``MemoryProbe.drop_transients``)."""
    group, runner = prepared.group, prepared.runner
    staged = stage(prepared.inputs[batch], runner)
    outputs = runner.infer(staged)
    if runner.is_cuda:  # the runner enqueued on its own stream; read only finished outputs
        torch.cuda.synchronize()
    policy = TolerancePolicy(group.precision, group.atol, group.rtol, group.per_output)
    expected = prepared.expected[batch]
    if prepared.evaluation is not None:  # int8: graded on the evaluation set, run at this batch size
        eval_inputs, expected = prepared.evaluation
        outputs = int8_grading.run_in_batches(
            lambda part: runner.infer(stage(part, runner)), eval_inputs, batch
        )
        runner.infer(staged)  # the first call _steady_memory expects, on the case's own inputs
    agreement = compare(outputs, expected, group.source.output_names, policy)
    del outputs
    assert prepared.probe is not None, "a timing-only preparation is never checked"
    memory = _steady_memory(prepared.probe, runner, staged, prepared.artifact)
    details = _jsonable(runner.details) | _reference_mark(group) | _layout_note(group)
    return _ok_case(prepared, key, contest, details, agreement=agreement, memory=memory)


def timing_case(prepared: Prepared, key: CaseKey, batch: int, contest: str | None = None) -> CaseResult:
    """A contest's later process: the member runs the batch once (so a broken runner fails here,
    not inside a timed block), and the result carries what timing needs; agreement and memory
    come from the process that checked them (``contest.merge_processes``)."""
    prepared.runner.infer(stage(prepared.inputs[batch], prepared.runner))
    return _ok_case(prepared, key, contest, {"timing_only": True})


def _ok_case(prepared: Prepared, key: CaseKey, contest: str | None, details: dict[str, Any],
             **measured: Any) -> CaseResult:  # fmt: skip
    """A passing run's result: what every ok case carries, plus what this pass ``measured``."""
    return CaseResult(
        key,
        "ok",
        build_seconds=round(prepared.runner.build_seconds, 4),
        artifact=failures.artifact_summary(prepared.artifact),
        spec=prepared.group.spec,
        details=details,
        contest=contest,
        **measured,
    )


def measure_memory(prepared: Prepared) -> dict[int, MemoryStats]:
    """A contest's memory pass for one member: its runner prepared again against its own
    baseline, after every member has run once at every batch size.

    By then what a runtime keeps per shape across runners (cuDNN's and ORT's algorithm choices,
    oneDNN and MLAS per-thread scratch buffers, lazily loaded kernels) is at its high-water mark
    for the whole contest, so a member that shares shapes with an earlier one (early fusion kept
    and merged are one graph) no longer reads smaller because it went second.
    """
    group = prepared.group
    probe = MemoryProbe(group.target.device_kind)
    probe.start()
    runner = backend_of(group.target).prepare(group.source, group.target, group.options)
    memory = {}
    with runner:
        for b in group.batches:
            staged = stage(prepared.inputs[b], runner)
            runner.infer(staged)
            memory[b] = _steady_memory(probe, runner, staged, prepared.artifact)
    return memory


def _steady_memory(probe: MemoryProbe, runner: Runner, staged: list[Tensor], artifact: Any) -> MemoryStats:
    """Memory after a second call on ``staged`` (the caller made the first), the first call's
    transients dropped before it (``MemoryProbe.drop_transients``)."""
    probe.drop_transients()
    runner.infer(staged)
    return probe.read(
        runner.uses_torch_allocator,
        runner.details.get("engine_device_memory_bytes"),
        artifact.size_bytes if artifact else None,
    )


def run_group(group: CaseGroup) -> Iterator[CaseResult]:
    """Yield one CaseResult per batch size, in order, as each finishes."""
    reason = unavailable_reason(group)
    if reason:
        yield from failures.unavailable(group, reason)
        return
    warm_runtimes([group])
    try:
        prepared = prepare(group)
    except Exception as exc:
        yield from failures.failed(group, f"prepare: {failures.describe(exc)}")
        return
    with prepared.runner:
        for key, batch in zip(group.case_keys(), group.batches):
            try:
                case = check_case(prepared, key, batch)
                if group.protocol:
                    measurement = measure(
                        prepared.runner,
                        prepared.inputs[batch],
                        group.protocol,
                        prepared.flops,
                        group.transfers,
                    )
                    case = replace(case, latency=measurement.latency, transfers=measurement.transfers)
                yield case
            except Exception as exc:
                message = f"batch {batch}: {failures.describe(exc)}"
                yield from failures.failed(group, message, [key], artifact=prepared.artifact)


def _layout_note(group: CaseGroup) -> dict[str, Any]:
    """What the source's layout did to the model (a user's branches merged by the graph pass)."""
    note = group.source.layout_note()
    return {"merge": note} if note else {}


def _reference_mark(group: CaseGroup) -> dict[str, Any]:
    """Mark the case whose target computed the oracle itself: it agrees by construction."""
    own = group.source.self_reference_target
    return {"is_reference": True} if own is not None and str(group.target) == own else {}


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in details.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (str, int, float, bool)) else str(x) for x in v]
        else:
            out[k] = str(v)
    return out
