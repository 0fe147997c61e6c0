"""Datasheet peaks of the GPUs ccnbench has run on, shown beside the measured roofs as
estimates: a card's sustained clocks, power cap and the kernels a runtime picks decide what it
reaches, which is why the measured roof is the one every reading uses.

Dense (no sparsity) figures from NVIDIA's H100 and H200 datasheets: FP32 non-tensor FLOP/s, FP16
tensor-core FLOP/s, and memory bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Datasheet:
    name: str
    fp32: float  # FLOP/s
    fp16_tensor: float  # FLOP/s, dense
    memory: float  # bytes/s


DATASHEETS = (
    Datasheet("H100 NVL", 60e12, 835e12, 3.9e12),
    Datasheet("H100 PCIe", 51e12, 756e12, 2.0e12),
    Datasheet("H100", 67e12, 989e12, 3.35e12),  # SXM5; checked after the PCIe and NVL names
    Datasheet("H200", 67e12, 989e12, 4.8e12),
)


def datasheet_for(gpu_name: str) -> Datasheet | None:
    """The datasheet row whose name the device's name contains (most specific first), or None."""
    for sheet in DATASHEETS:
        if all(part in gpu_name for part in sheet.name.split()):
            return sheet
    return None
