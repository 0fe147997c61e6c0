"""Run one case group: prepare a runner once, then check (and optionally time) every batch size.

This is what a worker process does in a sweep and what ``ccnbench check`` does in-process.
Every failure becomes a CaseResult with a status and a message; nothing here raises for a
broken backend, so one bad target never stops the others.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ccnbench.agreement import Tolerance, TolerancePolicy, compare
from ccnbench.backends import BuildOptions, Runner, Target, backend_of
from ccnbench.memory import MemoryProbe, MemoryStats
from ccnbench.oracle import reference
from ccnbench.results import CaseKey, CaseResult
from ccnbench.source import ModelSource
from ccnbench.timing import Protocol, measure, stage


@dataclass(frozen=True)
class CaseGroup:
    """Cases that share one prepared runner: one source on one target at one precision."""

    source: ModelSource
    target: Target
    precision: str
    batches: tuple[int, ...]
    options: BuildOptions
    protocol: Protocol | None = None  # None: agreement only (ccnbench check)
    atol: float | None = None
    rtol: float | None = None
    per_output: dict[str, Tolerance] = field(default_factory=dict)
    seed: int = 0
    transfers: bool = False

    def case_keys(self) -> list[CaseKey]:
        return [
            CaseKey(
                self.source.label,
                self.source.digest,
                self.source.layout,
                str(self.target),
                self.precision,
                b,
                self.options.memory_format,
            )
            for b in self.batches
        ]

    @property
    def label(self) -> str:
        target = self.case_keys()[0].target_label if self.batches else str(self.target)
        return f"{self.source.label} {self.source.layout} {target} {self.precision}"

    def to_dict(self) -> dict[str, Any]:
        options = asdict(self.options)
        options["artifacts_dir"] = str(self.options.artifacts_dir)
        return {
            "source": self.source.to_dict(),
            "target": str(self.target),
            "precision": self.precision,
            "batches": list(self.batches),
            "options": options,
            "protocol": self.protocol.to_dict() if self.protocol else None,
            "atol": self.atol,
            "rtol": self.rtol,
            "per_output": {k: asdict(v) for k, v in self.per_output.items()},
            "seed": self.seed,
            "transfers": self.transfers,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseGroup:
        options = dict(data["options"])
        options["artifacts_dir"] = Path(options["artifacts_dir"])
        options["batch_sizes"] = tuple(options["batch_sizes"])
        return cls(
            source=ModelSource.from_dict(data["source"]),
            target=Target.parse(data["target"]),
            precision=data["precision"],
            batches=tuple(data["batches"]),
            options=BuildOptions(**options),
            protocol=Protocol(**data["protocol"]) if data.get("protocol") else None,
            atol=data.get("atol"),
            rtol=data.get("rtol"),
            per_output={k: Tolerance(**v) for k, v in (data.get("per_output") or {}).items()},
            seed=int(data.get("seed", 0)),
            transfers=bool(data.get("transfers", False)),
        )


def unavailable_reason(group: CaseGroup) -> str | None:
    """Why a group cannot run here, or None. Cheap: no runner is built."""
    backend = backend_of(group.target)
    if group.target.device not in backend.devices:
        return f"{backend.name} has no device {group.target.device}"
    if group.precision not in backend.precisions(group.target.device):
        return f"{group.target} has no {group.precision} path (it runs {', '.join(backend.precisions(group.target.device))})"
    if not backend.needs_onnx and not group.source.has_module:
        return f"{group.target} runs a PyTorch module; {group.source.label} is an ONNX file (use --model)"
    if group.source.kind == "onnx" and group.source.precision != group.precision:
        return f"{group.source.label} is a {group.source.precision} file, not {group.precision}"
    return backend.availability(group.target.device)


@dataclass
class Prepared:
    """A built runner and what its cases are checked with: seeded inputs and oracle outputs per
    batch size, the FLOP count, the artifact it loaded, and the memory probe started before it."""

    group: CaseGroup
    runner: Runner
    inputs: dict[int, tuple[Tensor, ...]]
    expected: dict[int, tuple[Tensor, ...]]
    flops: int | None
    artifact: Any
    probe: MemoryProbe


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


def prepare(group: CaseGroup) -> Prepared:
    """Build the group's runner (raises on failure). Shared by ``run_group`` and contests.

    The oracle's float64 pass and the FLOP count run before the memory probe starts, so neither
    is charged to the target's memory.
    """
    backend = backend_of(group.target)
    inputs = {b: group.source.make_inputs(b, group.seed) for b in group.batches}
    expected = {
        b: reference(group.source, x, b, group.seed, group.options.artifacts_dir) for b, x in inputs.items()
    }
    flops = group.source.flops_per_sample()
    # The file the target loads (ONNX, .pt2), built in the sweep's parent and reused here.
    artifact = backend.artifact(group.source, group.target, group.options)
    probe = MemoryProbe(group.target.device_kind)
    probe.start()
    runner = backend.prepare(group.source, group.target, group.options)
    return Prepared(group, runner, inputs, expected, flops, artifact, probe)


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
    agreement = compare(outputs, prepared.expected[batch], group.source.output_names, policy)
    del outputs
    memory = _steady_memory(prepared.probe, runner, staged, prepared.artifact)
    return CaseResult(
        key,
        "ok",
        agreement=agreement,
        memory=memory,
        build_seconds=round(runner.build_seconds, 4),
        artifact=_artifact_summary(prepared.artifact),
        spec=_spec(group),
        details=_jsonable(runner.details) | _reference_mark(group) | _layout_note(group),
        contest=contest,
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


def failed_cases(group: CaseGroup, message: str, contest: str | None = None) -> list[CaseResult]:
    return [CaseResult(k, "failed", message, spec=_spec(group), contest=contest) for k in group.case_keys()]


def run_group(group: CaseGroup) -> Iterator[CaseResult]:
    """Yield one CaseResult per batch size, in order, as each finishes."""
    reason = unavailable_reason(group)
    if reason:
        for key in group.case_keys():
            yield CaseResult(key, "unavailable", reason, spec=_spec(group))
        return
    warm_runtimes([group])
    try:
        prepared = prepare(group)
    except Exception as exc:
        yield from failed_cases(group, f"prepare: {_describe(exc)}")
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
                yield CaseResult(
                    key,
                    "failed",
                    f"batch {batch}: {_describe(exc)}",
                    spec=_spec(group),
                    artifact=_artifact_summary(prepared.artifact),
                )


def _spec(group: CaseGroup) -> dict[str, Any] | None:
    return group.source.spec.to_dict() if group.source.spec else None


def _layout_note(group: CaseGroup) -> dict[str, Any]:
    """What the source's layout did to the model (a user's branches merged by the graph pass)."""
    note = group.source.layout_note()
    return {"merge": note} if note else {}


def _reference_mark(group: CaseGroup) -> dict[str, Any]:
    """Mark the case whose target computed the oracle itself: it agrees by construction."""
    own = group.source.self_reference_target
    return {"is_reference": True} if own is not None and str(group.target) == own else {}


def _artifact_summary(artifact: Any) -> dict[str, Any] | None:
    if artifact is None:
        return None
    return {
        "file": artifact.path.name,
        "size_bytes": artifact.size_bytes,
        "sha256": artifact.sha256,
        "opset": artifact.opset,
        "conv_count": artifact.conv_count,
        "export_seconds": artifact.export_seconds,
    }


def _describe(exc: BaseException) -> str:
    """One line: the exception type and message, plus where it came from in a user's code."""
    text = " ".join(str(exc).split())[:500] or "(no message)"
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {text}{where}"


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
