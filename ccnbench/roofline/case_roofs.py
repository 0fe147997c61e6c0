"""The roofline of a sweep's cases: each case's FLOPs and least bytes per call and the roofs of
its runtime, written into the case (``details.roofline``) so the report, ``recommend`` and
``compare`` read a case's distance from the roof from the results file alone.

Counted in the sweep's parent before any worker starts, so neither the traced forwards nor the
roof measurements overlap a timed block. ``CCNBENCH_ROOFLINE=0`` turns it off (a time-boxed
GPU run, say); the cases then carry no reading.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ccnbench.errors import one_line
from ccnbench.results import CaseKey, CaseResult
from ccnbench.roofline.layer_costs import Traffic, trace_costs
from ccnbench.roofline.reading import Reading, read
from ccnbench.roofline.roofs import Roof, RoofPair, roofs_for

DETAIL = "roofline"


def enabled() -> bool:
    return os.environ.get("CCNBENCH_ROOFLINE", "1") not in ("0", "off", "false", "no")


class SweepRoofline:
    """Each timed case's traffic and roofs, ready to be stamped on its result."""

    def __init__(self, groups: Sequence[Any], on_note: Callable[[str], None] | None = None) -> None:
        """``groups``: the sweep's ``run.plan.CaseGroup``s (typed loosely: the roofline sits below
        the run stage, which calls it)."""
        note = on_note or (lambda _: None)
        self._stamps: dict[CaseKey, dict[str, Any]] = {}
        timed = [g for g in groups if g.protocol is not None]
        traffic: dict[tuple[str, str, str, int], Traffic | None] = {}
        modules: dict[tuple[str, str], Any] = {}
        for group in timed:
            source = group.source
            for batch in group.batches:
                key = (source.label, source.layout, group.precision, batch)
                if key in traffic:
                    continue
                traffic[key] = None
                if not _built_in(source):
                    continue
                try:
                    if (source.label, source.layout) not in modules:
                        modules[(source.label, source.layout)] = source.module()
                    module = modules[(source.label, source.layout)]
                    traffic[key] = trace_costs(module, source.make_inputs(batch), group.precision).total()
                except Exception as exc:  # a module that will not trace: its cases carry no reading
                    note(f"roofline: {source.label} {source.layout} not counted ({one_line(exc, 160)})")
        pairs = roofs_for(
            ((g.target, g.precision, g.options.threads) for g in timed),
            on_measure=lambda key: note(f"measuring the roof: {key}"),
        )
        for group in timed:
            pair = pairs[(group.target, group.precision, group.options.threads)]
            for key, batch in zip(group.case_keys(), group.batches):
                counted = traffic.get((group.source.label, group.source.layout, group.precision, batch))
                if counted is not None and pair.complete:
                    self._stamps[key] = stamp(counted, pair)

    def annotate(self, case: CaseResult) -> CaseResult:
        found = self._stamps.get(case.key)
        if found is None or case.latency is None:
            return case
        return replace(case, details={**case.details, DETAIL: found})


def _built_in(source: Any) -> bool:
    """Only ccnbench's own variants are traced here, in the sweep's parent: a user's factory is
    the user's code, which may crash or hang, and runs only in workers (their cases get no
    stamp; ``ccnbench explain --model`` reads them against the roofs)."""
    return source.has_module and source.to_dict().get("kind") == "spec"


def stamp(traffic: Traffic, pair: RoofPair) -> dict[str, Any]:
    def roof(r: Roof) -> dict[str, Any]:
        return {"family": r.key.family, "rate": r.rate, "spread": r.spread, "method": r.method}

    return {
        "flops": traffic.flops,
        "bytes": traffic.bytes,
        "compute": roof(pair.compute),  # type: ignore[arg-type]
        "memory": roof(pair.memory),  # type: ignore[arg-type]
    }


def case_reading(case: CaseResult) -> Reading | None:
    """The case's fastest call against its roofs (None for a case without a roofline stamp)."""
    found = case.details.get(DETAIL) if case.details else None
    if not found or case.latency is None:
        return None
    try:
        seconds = case.latency.fastest / 1e3
        traffic = Traffic(int(found["flops"]), int(found["bytes"]))
        return read(traffic, seconds, float(found["compute"]["rate"]), float(found["memory"]["rate"]))
    except (KeyError, TypeError, ValueError):
        return None


def roof_text(reading: Reading | None) -> str:
    """``41% of memory roof`` for tables."""
    if reading is None:
        return "-"
    return f"{reading.of_roof:.0%} ({reading.bound})"
