"""`ccnbench roofs`: the measured roofs of this machine for some targets (cached per machine),
with their spread over repeats and the datasheet estimates of a known GPU beside them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ccnbench.backends import Target
from ccnbench.roofline.published import datasheet_for
from ccnbench.roofline.roofs import MEMORY, Roof, RoofCache, roofs_for, this_machine


@dataclass(frozen=True)
class RoofRow:
    roof: Roof | None
    label: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "roof": self.roof.to_dict() if self.roof else None, "note": self.note}


def roof_rows(
    targets: Sequence[Target],
    precisions: Sequence[str],
    threads: int,
    refresh: bool = False,
    on_measure: Callable[[str], None] | None = None,
    reset: bool = False,
) -> tuple[str, list[RoofRow]]:
    """(the machine id, one row per distinct roof) for every target and precision asked."""
    machine = this_machine()
    cache = RoofCache(machine)
    pairs = roofs_for(
        ((t, p, threads) for t in targets for p in precisions),
        refresh=refresh,
        cache=cache,
        on_measure=(lambda key: on_measure(f"measuring {key}")) if on_measure else None,
        reset=reset,
    )
    rows: dict[str, RoofRow] = {}
    for pair in pairs.values():
        for roof in (pair.compute, pair.memory):
            if roof is not None:
                rows.setdefault(str(roof.key), RoofRow(roof, str(roof.key)))
        for reason in pair.reasons:
            rows.setdefault(reason, RoofRow(None, reason.split(":")[0], reason.partition(": ")[2]))
    return machine, [*rows.values(), *estimates(targets)]


def estimates(targets: Sequence[Target]) -> list[RoofRow]:
    """The datasheet peaks of the visible GPU, labelled as estimates (only when a CUDA target is asked)."""
    if not any(t.is_cuda for t in targets):
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    name = torch.cuda.get_device_name(0)
    sheet = datasheet_for(name)
    if sheet is None:
        return [RoofRow(None, f"{name}: no datasheet figures known", "")]
    return [
        RoofRow(None, f"{name} datasheet fp32", f"estimate: {sheet.fp32 / 1e12:,.0f} TFLOP/s"),
        RoofRow(
            None, f"{name} datasheet fp16 tensor", f"estimate: {sheet.fp16_tensor / 1e12:,.0f} TFLOP/s dense"
        ),
        RoofRow(None, f"{name} datasheet memory", f"estimate: {sheet.memory / 1e12:,.2f} TB/s"),
    ]


def rate_text(roof: Roof, value: float) -> str:
    if roof.key.family == MEMORY:
        return f"{value / 1e9:,.1f} GB/s"
    return f"{value / 1e9:,.1f} GFLOP/s"
