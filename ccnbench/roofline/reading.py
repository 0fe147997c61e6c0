"""A time read against the roofline: achieved rate, arithmetic intensity, and the fraction of
the roof that bounds it.

The attainable rate at intensity I (FLOP/byte) is min(compute roof, I × memory roof). Below the
ridge (compute / memory) a unit is memory-bound and its fraction is the bandwidth it achieved
over the memory roof; above it, compute-bound, FLOP/s over the compute roof. Both are the same
number, achieved over attainable, so a layer with no FLOPs (pooling, BatchNorm) still has one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ccnbench.roofline.layer_costs import Traffic


@dataclass(frozen=True)
class Reading:
    flops: int
    bytes: int
    seconds: float
    bound: str  # "compute" or "memory"
    of_roof: float  # achieved / attainable

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def flops_per_second(self) -> float:
        return self.flops / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def short(self) -> str:
        """``41% mem`` / ``12% cmp``: the table's column."""
        return f"{self.of_roof:.0%} {'mem' if self.bound == 'memory' else 'cmp'}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(intensity=self.intensity, flops_per_second=self.flops_per_second)
        return data


def attainable(intensity: float, compute: float, memory: float) -> float:
    return min(compute, intensity * memory)


def read(traffic: Traffic, seconds: float, compute: float, memory: float) -> Reading | None:
    """``traffic`` done in ``seconds`` against roofs of ``compute`` FLOP/s and ``memory`` B/s."""
    if seconds <= 0 or traffic.bytes <= 0 or compute <= 0 or memory <= 0:
        return None
    if traffic.intensity * memory < compute:
        return Reading(traffic.flops, traffic.bytes, seconds, "memory", traffic.bytes / seconds / memory)
    return Reading(traffic.flops, traffic.bytes, seconds, "compute", traffic.flops / seconds / compute)
