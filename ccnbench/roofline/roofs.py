"""Measured roofs, cached per machine fingerprint.

A roof is the fastest rate the case's own runtime reaches on work that is not limited by the
model: FLOP/s of one large GEMM (compute) and bytes/s of a triad (memory), at the case's device,
precision and thread count. The rate kept is the best of ``repeats`` timed blocks (noise on a
shared machine only slows a block down), and every repeat is kept beside it, so a reader sees
the spread. The cache file is named by the machine id of ``ccnbench env`` and holds how each roof
was measured and when, with the runtime's version: a different CPU, runtime or thread count is a
different roof, measured anew.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ccnbench.backends import Target
from ccnbench.errors import one_line
from ccnbench.roofline import kernels

# Which runtime's GEMM bounds a target (the compiled PyTorch forms run PyTorch's kernels).
FAMILIES = {
    "torch": "torch",
    "compile": "torch",
    "compile-graphs": "torch",
    "aoti": "torch",
    "ort": "onnxruntime",
    "openvino": "openvino",
    "tensorrt": "tensorrt",
}
MEMORY = "memory"
REPEATS = 5
# Seconds per timed block; CCNBENCH_ROOF_SECONDS shortens it where only the bookkeeping matters
# (the test suite), never for a roof anyone reads.
BLOCK_SECONDS = float(os.environ.get("CCNBENCH_ROOF_SECONDS", "0.3"))


@dataclass(frozen=True)
class RoofKey:
    """What a roof is a roof of: ``family`` is a runtime (compute) or ``memory``."""

    family: str
    device: str
    precision: str
    threads: int

    def __str__(self) -> str:
        what = "memory" if self.family == MEMORY else f"{self.family} {self.precision}"
        return f"{what} on {self.device}, {self.threads} thread(s)"


@dataclass(frozen=True)
class Roof:
    key: RoofKey
    rate: float  # FLOP/s (compute) or bytes/s (memory): the best repeat
    repeats: tuple[float, ...]
    method: str
    software: str
    measured_at: str

    @property
    def is_memory(self) -> bool:
        return self.key.family == MEMORY

    @property
    def median(self) -> float:
        return statistics.median(self.repeats)

    @property
    def spread(self) -> float:
        """(best - worst) / best over the repeats."""
        return (max(self.repeats) - min(self.repeats)) / max(self.repeats) if self.repeats else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["key"] = asdict(self.key)
        data["repeats"] = list(self.repeats)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Roof:
        return cls(
            RoofKey(**data["key"]),
            float(data["rate"]),
            tuple(float(r) for r in data["repeats"]),
            data["method"],
            data.get("software", ""),
            data.get("measured_at", ""),
        )


@dataclass(frozen=True)
class RoofPair:
    """The two roofs that bound one case: its runtime's compute roof and its device's memory roof."""

    compute: Roof | None
    memory: Roof | None
    reasons: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return self.compute is not None and self.memory is not None

    @property
    def ridge(self) -> float | None:
        """The arithmetic intensity (FLOP/byte) where the two roofs meet."""
        return self.compute.rate / self.memory.rate if self.complete else None  # type: ignore[union-attr]


def compute_key(target: Target, precision: str, threads: int) -> RoofKey:
    family = FAMILIES.get(target.backend, target.backend)
    if target.is_cuda:
        # On a GPU every runtime is read against the device's cuBLAS GEMM through PyTorch: the
        # roof is the card's, and ONNX Runtime CUDA and TensorRT call the same libraries.
        family = "torch"
    return RoofKey(family, target.device_kind, precision, threads if not target.is_cuda else 0)


def memory_key(target: Target, threads: int) -> RoofKey:
    return RoofKey(MEMORY, target.device_kind, "-", threads if not target.is_cuda else 0)


def software_version(family: str) -> str:
    """The measuring library's version (read without importing it): a new one is a new roof."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch" if family == MEMORY else family)
    except PackageNotFoundError:
        return ""


def measure(key: RoofKey, repeats: int = REPEATS, seconds: float = BLOCK_SECONDS) -> Roof:
    """Measure one roof now (raises when its runtime cannot run that precision there)."""
    threads = max(1, key.threads)
    if key.family == MEMORY:
        rates = kernels.triad(key.device, threads, repeats, seconds)
        elements = kernels.TRIAD_ELEMENTS * (1 if key.device == "cpu" else 8)
        method = f"triad a = b + {kernels.TRIAD_SCALE:g}·c, 3 × {elements * 4 / 2**20:,.0f} MiB fp32 (torch)"
    else:
        gemm = kernels.GEMMS.get(key.family)
        if gemm is None:
            raise ValueError(f"no GEMM measurement for {key.family}")
        rates = gemm(key.device, key.precision, threads, repeats, seconds)
        n = kernels.GEMM_SIZE if key.device == "cpu" else 8192
        method = f"GEMM {n}×{n}×{n} {key.precision} ({key.family})"
    method += f", fastest call of each of {repeats} blocks of {seconds:g} s"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Roof(key, max(rates), tuple(rates), method, software_version(key.family), now)


KEEP_REPEATS = 25


def merged(old: Roof, new: Roof) -> Roof:
    """Two measurements of one roof as one: every repeat (the latest ``KEEP_REPEATS``), the best
    of them as the rate, the newer method, version and time."""
    repeats = (*old.repeats, *new.repeats)[-KEEP_REPEATS:]
    return Roof(new.key, max(max(repeats), old.rate), repeats, new.method, new.software, new.measured_at)


def cache_dir() -> Path:
    """``CCNBENCH_CACHE`` or ``~/.cache/ccnbench``: roofs belong to the machine, not to a run."""
    base = os.environ.get("CCNBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ccnbench")
    return Path(base) / "roofs"


class RoofCache:
    """The roofs of one machine, read from and written to ``<cache>/roofs/<machine id>.json``."""

    def __init__(
        self,
        machine_id: str,
        directory: Path | None = None,
        measure_roof: Callable[[RoofKey], Roof] = measure,
    ) -> None:
        self.path = (directory or cache_dir()) / f"{machine_id}.json"
        self.machine_id = machine_id
        self._measure = measure_roof
        self._roofs: dict[RoofKey, Roof] = {}
        try:
            data = json.loads(self.path.read_text())
            for item in data.get("roofs", []):
                roof = Roof.from_dict(item)
                self._roofs[roof.key] = roof
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache yet, or one from an older layout: measure anew

    def get(
        self,
        key: RoofKey,
        refresh: bool = False,
        on_measure: Callable[[RoofKey], None] | None = None,
        reset: bool = False,
    ) -> Roof:
        """The cached roof of ``key``, measured now if it has none or the measuring library's
        version changed since. ``refresh`` measures again and keeps every repeat of both: noise
        only ever lowers a measurement, so the roof is the best repeat of all of them, and a
        measurement taken on a busy machine cannot pull it down. ``reset`` forgets the old one."""
        cached = self._roofs.get(key)
        current = cached is not None and cached.software == software_version(key.family)
        if current and not refresh and not reset:
            return cached  # type: ignore[return-value]
        if on_measure:
            on_measure(key)
        roof = self._measure(key)
        if current and not reset:
            roof = merged(cached, roof)  # type: ignore[arg-type]
        self._roofs[key] = roof
        self._save()
        return roof

    def roofs(self) -> list[Roof]:
        return list(self._roofs.values())

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"machine_id": self.machine_id, "roofs": [r.to_dict() for r in self._roofs.values()]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(self.path)


def this_machine() -> str:
    from ccnbench.environment import collect, machine_id

    return machine_id(collect())


def roofs_for(
    cases: Iterable[tuple[Target, str, int]],
    refresh: bool = False,
    cache: RoofCache | None = None,
    on_measure: Callable[[RoofKey], None] | None = None,
    reset: bool = False,
) -> dict[tuple[Target, str, int], RoofPair]:
    """The compute and memory roof of each (target, precision, threads), measured once each."""
    cache = cache or RoofCache(this_machine())
    pairs = {}
    done: dict[RoofKey, Roof | str] = {}
    for target, precision, threads in dict.fromkeys(cases):
        found: list[Roof | None] = []
        reasons = []
        for key in (compute_key(target, precision, threads), memory_key(target, threads)):
            if key not in done:
                try:
                    done[key] = cache.get(key, refresh=refresh, on_measure=on_measure, reset=reset)
                except Exception as exc:  # a runtime without this precision or device: no roof
                    done[key] = f"{key}: not measured ({one_line(exc)})"
            value = done[key]
            found.append(value if isinstance(value, Roof) else None)
            if isinstance(value, str):
                reasons.append(value)
        pairs[(target, precision, threads)] = RoofPair(found[0], found[1], tuple(reasons))
    return pairs
