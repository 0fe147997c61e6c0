"""Planning: what runs. Every command's cases come from here, none are planned anywhere else.

A ``CaseGroup`` is one source on one target at one precision (and memory format) over its batch
sizes: the cases that share one prepared runner. ``case_groups`` makes them from sources and
targets (``check``, scripts, tests); ``expand`` makes them from a ``SweepConfig`` (``bench``),
selection by selection, and keeps the part ``--shard K/N`` asks for (``select``).

The unit a sweep splits by is the *contest* (``contest_key``): one model (label and digest) at
one precision on one kind of device. All layouts and targets of a contest stay in one part,
because they are timed against each other in one process. Contests go to parts by expected
cost, largest first, each to the part with the least so far: deterministic for a given
configuration, and balanced. Nothing here builds a runner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ccnbench.backends import BuildOptions, Target, backend_of, parse_targets
from ccnbench.environment import default_threads
from ccnbench.formats.int8 import is_int8
from ccnbench.measure.agreement import Tolerance
from ccnbench.measure.timing import Protocol
from ccnbench.results import CaseKey
from ccnbench.run import selection
from ccnbench.run.config import MODEL_DEFAULTS, SweepConfig, as_list
from ccnbench.source import ModelSource


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
                self.quantization,
            )
            for b in self.batches
        ]

    @property
    def quantization(self) -> str:
        """An int8 case's recipe (part of its key); "" otherwise, and for a user's own file, whose
        digest already says which file it is."""
        from ccnbench.formats.int8 import is_int8, recipe_for

        if not is_int8(self.precision) or self.source.kind == "onnx":
            return ""
        return recipe_for(self.precision).key

    @property
    def label(self) -> str:
        target = self.case_keys()[0].target_label if self.batches else str(self.target)
        return f"{self.source.label} {self.source.layout} {target} {self.precision}"

    @property
    def spec(self) -> dict[str, Any] | None:
        """The variant's spec as results store it (None for a user's model or file)."""
        return self.source.spec.to_dict() if self.source.spec else None

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
    device = group.target.device
    if device not in backend.devices:
        return f"{backend.name} has no device {device}"
    if is_int8(group.precision) and not backend.needs_onnx:
        return (
            f"{group.target} runs the PyTorch module, and int8 here is a QDQ ONNX file made by ONNX Runtime's "
            "quantizer (PyTorch's own int8 is another model): run it on ort:cpu or openvino:cpu"
        )
    if group.precision not in backend.precisions(device):
        return (
            f"{group.target} has no {group.precision} path (it runs {', '.join(backend.precisions(device))})"
        )
    if not backend.needs_onnx and not group.source.has_module:
        return f"{group.target} runs a PyTorch module; {group.source.label} is an ONNX file (use --model)"
    if group.source.kind == "onnx" and group.source.precision != group.precision:
        return f"{group.source.label} is a {group.source.precision} file, not {group.precision}"
    return backend.availability(device)


def case_groups(
    sources: Sequence[ModelSource],
    targets: Sequence[Target],
    precisions: Sequence[str],
    batches: Sequence[int],
    artifacts_dir: Path | str,
    opset: int = 18,
    threads: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    per_output: dict[str, Tolerance] | None = None,
    seed: int = 0,
    protocol: Protocol | None = None,
    transfers: bool = False,
    dynamic_batch: bool = False,
    memory_formats: Sequence[str] = ("contiguous",),
    io: str = "fp32",
    eval_inputs: str | None = None,
) -> list[CaseGroup]:
    """Every source × target × precision as a case group over the batch sizes, and for the
    PyTorch targets one per memory format asked for (the others have only their own layout)."""
    for memory_format in memory_formats:
        BuildOptions(memory_format=memory_format)  # a UsageError for an unknown one, before any case
    options = {
        "batch_sizes": tuple(batches),
        "threads": threads or default_threads(),
        "artifacts_dir": Path(artifacts_dir),
        "opset": opset,
        "dynamic_batch": dynamic_batch,
        "io": io,
        "eval_inputs": eval_inputs,
    }
    return [
        CaseGroup(
            source,
            target,
            precision,
            source.fixed_batches() or tuple(batches),
            BuildOptions(precision=precision, memory_format=memory_format, **options),
            protocol=protocol,
            atol=atol,
            rtol=rtol,
            per_output=dict(per_output or {}),
            seed=seed,
            transfers=transfers,
        )
        for source in sources
        for target in targets
        for precision in precisions
        for memory_format in _formats(target, memory_formats)
    ]


def _formats(target: Target, asked: Sequence[str]) -> list[str]:
    """The memory formats ``target`` runs of those asked for; a file format runs its own layout."""
    offered = backend_of(target).memory_formats
    return [f for f in asked if f in offered] or [offered[0]]


def expand_all(config: SweepConfig, timed: bool = True) -> list[CaseGroup]:
    """Every model selection × target × precision of a sweep as a case group, whatever the shard;
    a group two selections share is planned once. Untimed groups (``check``) have no protocol."""
    targets = parse_targets(list(config.targets))
    groups: list[CaseGroup] = []
    for m in config.models:
        chosen = {**MODEL_DEFAULTS, **m}
        saved = (chosen["load_inputs"], chosen["load_outputs"]) if chosen["load_inputs"] else None
        sources = selection.sources(
            chosen["preset"], chosen["variants"], chosen["layouts"], chosen["branches"],
            chosen["input_modes"], config.seed if chosen["seed"] is None else chosen["seed"],
            chosen["model"], chosen["input_shape"], as_list(chosen["onnx"]) if chosen["onnx"] else None, saved,
            chosen["merge"],
        )  # fmt: skip
        groups += case_groups(
            sources, targets, config.precisions, config.batches, Path(config.artifacts), opset=config.opset,
            threads=config.threads, atol=config.atol, rtol=config.rtol, per_output=dict(config.per_output),
            seed=config.seed, protocol=config.protocol if timed else None, transfers=config.transfers,
            dynamic_batch=config.dynamic_batch, memory_formats=config.memory_formats,
            eval_inputs=config.eval_inputs,
        )  # fmt: skip
    seen: dict[tuple[str, ...], CaseGroup] = {}
    for g in groups:
        seen.setdefault(g.case_keys()[0].group, g)
    return list(seen.values())


def expand(config: SweepConfig, timed: bool = True) -> list[CaseGroup]:
    """The case groups a sweep runs: all of them, or its shard's part."""
    groups = expand_all(config, timed)
    return select(groups, *config.shard) if config.shard else groups


def contest_key(group: CaseGroup) -> tuple[str, str, str, str]:
    """The contest a group belongs to: model label and digest, precision, kind of device."""
    return (
        group.source.label,
        group.source.digest,
        contest_precision(group.precision),
        group.target.device_kind,
    )


def contest_precision(precision: str) -> str:
    """The precision a group's contest is named by: an int8 file is timed in its model's fp32
    contest, so "int8 is N x fp32" is a paired ratio with an interval, not two processes' drift."""
    return "fp32" if is_int8(precision) else precision


# Rough relative cost of preparing and timing one case on a target's backend: compilers and
# engine builders spend far longer before the first measurement than eager or ONNX Runtime.
_BACKEND_WEIGHT = {"compile": 4.0, "tensorrt": 6.0, "aoti": 6.0}


def expected_cost(group: CaseGroup) -> float:
    """A deterministic estimate from what the group is, without building anything."""
    voxels = math.prod(group.source.input_shape) * group.source.num_inputs
    weight = _BACKEND_WEIGHT.get(group.target.backend, 1.0)
    return weight * (1.0 + voxels * sum(group.batches) / 1e5)


def assign(groups: Sequence[CaseGroup], parts: int) -> dict[tuple[str, ...], int]:
    """Contest -> part index (0-based): largest expected cost first, each to the lightest part."""
    costs: dict[tuple[str, ...], float] = {}
    for g in groups:
        costs[contest_key(g)] = costs.get(contest_key(g), 0.0) + expected_cost(g)
    loads = [0.0] * parts
    owner = {}
    for key in sorted(costs, key=lambda k: (-costs[k], k)):
        part = min(range(parts), key=lambda i: (loads[i], i))
        owner[key] = part
        loads[part] += costs[key]
    return owner


def select(groups: Sequence[CaseGroup], k: int, n: int) -> list[CaseGroup]:
    """The groups of part ``k`` of ``n`` (1-based), in their original order."""
    owner = assign(groups, n)
    return [g for g in groups if owner[contest_key(g)] == k - 1]
