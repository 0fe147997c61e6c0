"""Profile each planned case: its fastest call with and without the profiler, then its layers.

Per case group two runners are prepared from the same file: a plain one, and one with the
runtime's profiler on (``BuildOptions.profiling``; for eager PyTorch, module hooks). Per batch
size both are warmed up, then timed in interleaved rounds in this one process (one block each
per round, ``timing.time_block``, the contests' block), so the profiler's overhead is measured
under the same load as the call it slows; then ``calls`` profiled calls give each unit of work's
median time per call.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ccnbench.backends import backend_of
from ccnbench.errors import CcnbenchError
from ccnbench.explain.onnx_nodes import conv_before_norm, has_folds, node_owners
from ccnbench.explain.profilers import LayerProfiler
from ccnbench.explain.records import FormatProfile, LayerEvent, Overhead
from ccnbench.explain.registry import profiler_for
from ccnbench.measure.timing import QUICK, bound_call, stage, time_block, warm_up
from ccnbench.run.case_group import warm_runtimes
from ccnbench.run.plan import CaseGroup, unavailable_reason

BLOCK_SECONDS = 0.05


@dataclass(frozen=True)
class Settings:
    rounds: int = 8
    calls: int = 20
    trace_dir: Path | None = None
    roofline: bool = True  # count each layer's FLOPs and bytes and read them against the roofs

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.calls < 1:
            raise CcnbenchError(f"--rounds and --calls must be at least 1 (got {self.rounds}, {self.calls})")


@dataclass(frozen=True)
class Skipped:
    """A case that could not be profiled, and why (one line)."""

    label: str
    reason: str


def profile_groups(
    groups: Sequence[CaseGroup], settings: Settings, on_case: Callable[[str], None] | None = None
) -> tuple[list[FormatProfile], list[Skipped]]:
    profiles: list[FormatProfile] = []
    skipped: list[Skipped] = []
    for group in groups:
        reason = unavailable_reason(group)
        if reason:
            skipped.append(Skipped(group.label, f"unavailable: {reason}"))
            continue
        warm_runtimes([group])
        try:
            profiles += profile_group(group, settings, on_case)
        except CcnbenchError as exc:
            skipped.append(Skipped(group.label, str(exc)))
        except Exception as exc:  # a runtime failing in a way we did not foresee: still one line
            skipped.append(Skipped(group.label, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    return profiles, skipped


def profile_group(
    group: CaseGroup, settings: Settings, on_case: Callable[[str], None] | None = None
) -> list[FormatProfile]:
    backend = backend_of(group.target)
    found = profiler_for(group.target.backend, group.target.device)
    plain = backend.prepare(group.source, group.target, group.options)
    try:
        owners = None
        if not isinstance(found, str):
            artifact = backend.artifact(group.source, group.target, group.options)
            if artifact is not None:
                owners = node_owners(artifact.path, _folds(group, artifact.path))
        out = []
        for batch in group.batches:
            if on_case:
                on_case(f"{group.label} b{batch}")
            if isinstance(found, str):
                out.append(_profile_batch(group, batch, plain, None, settings, found))
                continue
            # A profiling runner per batch size: ONNX Runtime ends a session's profile once.
            profiler = found(
                backend.prepare(group.source, group.target, replace(group.options, profiling=True)), owners
            )
            try:
                note = profiler.caveat or (owners.note if owners else None)
                out.append(_profile_batch(group, batch, plain, profiler, settings, note))
            finally:
                profiler.close()
                profiler.runner.close()
        return out
    finally:
        plain.close()


def _profile_batch(
    group: CaseGroup,
    batch: int,
    plain: Any,
    profiler: LayerProfiler | None,
    settings: Settings,
    note: str | None,
) -> FormatProfile:
    inputs = group.source.make_inputs(batch, group.seed)
    plain_call = bound_call(plain, stage(inputs, plain))
    warm_up(plain_call, plain, QUICK)
    fastest, fastest_profiled = [], []
    profiled_call = None
    if profiler is not None:
        staged = stage(inputs, profiler.runner)
        profiled_call = bound_call(profiler.runner, staged)
        with profiler.active():
            warm_up(profiled_call, profiler.runner, QUICK)
    for round_ in range(settings.rounds):
        fastest.append(min(time_block(plain_call, plain, BLOCK_SECONDS, round_=round_).samples_ms))
        if profiler is not None and profiled_call is not None:
            with profiler.active():
                block = time_block(profiled_call, profiler.runner, BLOCK_SECONDS, round_=round_)
            fastest_profiled.append(min(block.samples_ms))
    overhead = Overhead(
        min(fastest) * 1e3, min(fastest_profiled) * 1e3 if fastest_profiled else None, settings.rounds
    )
    profile = FormatProfile(
        group.source.label,
        group.source.layout,
        str(group.target),
        group.precision,
        batch,
        group.options.threads,
        overhead,
        note=note,
    )
    if profiler is None:
        return profile
    per_call = profiler.collect(staged, settings.calls)
    trace = None
    if settings.trace_dir is not None:
        settings.trace_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{group.source.label}-{group.source.layout}-{group.target}-{group.precision}-b{batch}"
        saved = profiler.save_trace(settings.trace_dir / stem.replace(":", "_").replace(" ", "_"))
        trace = str(saved) if saved else None
    return replace(profile, events=median_events(per_call), calls=len(per_call), trace=trace)


def _folds(group: CaseGroup, path: Path) -> dict[str, str]:
    """BatchNorm -> Conv pairs of the case's module, when its file has folded ones to place."""
    if not group.source.has_module or not has_folds(path):
        return {}
    module = group.source.module_for(group.source.layout).float().eval()
    return conv_before_norm(module, group.source.make_inputs(1, group.seed))


def median_events(per_call: Sequence[Sequence[LayerEvent]]) -> tuple[LayerEvent, ...]:
    """Each unit's median time per call, in the order units first ran.

    A unit (same name) that ran several times in one call is summed within that call first; a
    unit missing from a call counts 0 there.
    """
    first: dict[str, LayerEvent] = {}
    sums: list[dict[str, float]] = []
    for events in per_call:
        totals: dict[str, float] = {}
        for event in events:
            first.setdefault(event.name, event)
            totals[event.name] = totals.get(event.name, 0.0) + event.us
        sums.append(totals)
    return tuple(
        event.with_us(statistics.median(totals.get(name, 0.0) for totals in sums))
        for name, event in first.items()
    )
