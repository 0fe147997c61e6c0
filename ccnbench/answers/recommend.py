"""`ccnbench recommend`: which deployment format to ship, per model, batch size and device.

A format is a target (backend and device) with a layout and a precision. The answer is the
fastest one whose outputs agree with the float64 oracle; a faster format that failed agreement
or crashed is named with the reason it was rejected, so the choice is never silently optimistic.
Where none passed but some are ``vacuous`` (within tolerance of a reference too small or too flat
to fail a wrong file: an untrained model), those are ranked instead and the answer is labelled
UNVERIFIED, with why and what to do: a timing answer, not a claim that the file is right.

Formats are ranked by their fastest call (``LatencyStats.fastest``: on a shared machine noise
only adds time, so it is the figure a second run repeats), and when they were timed in one
contest the comparison is the paired fastest-call ratio with its 95 % interval over processes
(``stats.pair``); the runner-up's verdict comes from ``stats.verdict``:

- *tie*: the 90 % interval lies inside the equivalence margin (two one-sided tests at 5 %),
  ±10 % of parity by default (``stats.EQUIVALENCE``, which says why; ``equivalence`` takes
  another). Among formats tied with the fastest the simpler one is shipped (eager before compiled
  or exported, kept before merged, a vendor-neutral runtime before a hardware vendor's own, then
  by target name so that two runs pick the same one), and the line says so.
- *slower*: the fastest is shipped.
- *inconclusive*: the runner-up's interval contains parity but is too wide to call a tie; or a
  format simpler than the one shipped (a tie would ship it instead), whichever its rank, has an
  undecided tie with the fastest (``undecided_tie``): its interval crosses the margin's edge
  (``stats.verdict``'s ``material``), or only one calm process of several says it is slower.
  The fastest point estimate (or the simplest of those tied with it) is shipped, and the line
  says that the answer is inconclusive, against which format, and what to run to settle it
  (more processes per contest). It is never called a tie.
- *unpaired*: the two never ran in one contest; a ratio of fastest calls, said as such.

A merged layout whose graph is the kept one (early fusion has no parallel branches; a user's
model where the graph pass found nothing to merge) is not a second format: it is weighed as its
kept twin, so two timings of one graph never make an answer "inconclusive".

Each answer says what would be shipped: a file (ONNX, a ``.pt2`` package, a TensorRT engine,
ONNX run by OpenVINO) or the model's own Python code (eager, ``torch.compile``), as the target's
backend declares (``Backend.shipped``); ``shippable=True`` keeps only the file formats.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ccnbench.answers.derived import fastest_bounds, spread
from ccnbench.answers.stats import (
    EQUIVALENCE,
    TIE_CONFIDENCE,
    Interval,
    fastest_interval,
    pair,
    resolve_hint,
    tie_evidence,
    verdict,
)
from ccnbench.backends import BACKENDS, Backend, Target
from ccnbench.formats.int8 import is_int8
from ccnbench.measure.agreement import VACUOUS_ADVICE
from ccnbench.results import CaseResult
from ccnbench.roofline.case_roofs import case_reading


@dataclass(frozen=True)
class Choice:
    case: CaseResult

    @property
    def label(self) -> str:
        k = self.case.key
        return f"{k.target_label} {k.layout} {k.precision}"

    @property
    def ships(self) -> str | None:
        """The file a user ships for this format, or None when it needs the model's code."""
        return shipped_as(self.case.key.target)

    @property
    def median(self) -> float:
        assert self.case.latency is not None
        return self.case.latency.median

    @property
    def fastest(self) -> float:
        """What formats are ranked by (``LatencyStats.fastest``)."""
        assert self.case.latency is not None
        return self.case.latency.fastest

    @property
    def p99(self) -> float:
        assert self.case.latency is not None
        return self.case.latency.p99

    def figures(self) -> str:
        """What the line says of this format's latency: its own speed (the fastest call with its 95 %
        interval over processes) apart from what it waits under this host's load (the median, with
        its range over processes)."""
        latency = self.case.latency
        assert latency is not None
        bounds, median_range = fastest_bounds(latency), spread(latency, 50)
        own = f"fastest call {self.fastest:.3f} ms" + (f" {bounds}" if bounds else "")
        reading = case_reading(self.case)
        if reading is not None:
            # How far from the machine's limit: a winner near its roof has little left to gain.
            own += f", {reading.of_roof:.0%} of its {reading.bound} roof at {reading.intensity:.1f} FLOP/B"
        load = f"median under this host's load {self.median:.3f} ms"
        if median_range:
            load += f", {median_range} over {latency.processes} processes"
        return f"{own}; {load}"

    def to_dict(self) -> dict[str, Any]:
        """The format for ``recommend --json``: its figures as numbers, the fastest call's 95 %
        interval over processes and the median's and p99's ranges over processes (null where there
        is none: one calm process, one process)."""
        key, latency = self.case.key, self.case.latency
        assert latency is not None
        interval = fastest_interval(latency)
        known = interval is not None and interval.computable
        median_range, p99_range = latency.percentile_range(50), latency.percentile_range(99)
        return {"format": self.label, "target": key.target, "layout": key.layout,
                "memory_format": key.memory_format, "precision": key.precision, "ships": self.ships,
                "shippable": self.ships is not None, "fastest_ms": self.fastest, "median_ms": self.median,
                "p99_ms": self.p99,
                "max_abs_error": self.case.agreement.max_abs if self.case.agreement else None,
                "fastest_interval_ms": [interval.low, interval.high] if known else None,
                "median_range_ms": list(median_range) if median_range else None,
                "p99_range_ms": list(p99_range) if p99_range else None,
                "processes": latency.processes,
                "roofline": reading.to_dict() if (reading := case_reading(self.case)) else None}  # fmt: skip


@dataclass(frozen=True)
class Recommendation:
    model: str
    batch: int
    device: str
    best: Choice | None
    runner_up: Choice | None
    rejected: tuple[str, ...] = ()  # faster formats that were not chosen, with the reason
    not_measured: tuple[str, ...] = field(default_factory=tuple)
    tie_note: str = ""  # why a format that was not the fastest is shipped
    equivalence: float = EQUIVALENCE  # the margin inside which a ratio is a tie
    undecided: Choice | None = None  # a simpler format whose tie with ``fastest`` is open (``undecided_tie``)
    undecided_ratio: Interval | None = None  # its latency over the fastest's
    unverified: str = ""  # why agreement was not checked, when the formats ranked are ``vacuous``

    @property
    def fastest(self) -> Choice | None:
        """The fastest passing format: ``best``, unless a tie shipped a simpler one, which puts the
        fastest second (``break_ties``)."""
        return self.runner_up if self.tie_note else self.best

    @property
    def runner_up_ratio(self) -> Interval | None:
        """The runner-up's latency over the best's (paired within their contest, else unpaired)."""
        if self.best is None or self.runner_up is None:
            return None
        return pair(self.runner_up.case, self.best.case)

    @property
    def open_ratio(self) -> Interval | None:
        """The ratio that leaves the answer open, or that settles it: the undecided tie's, else the
        runner-up's."""
        return self.undecided_ratio if self.undecided is not None else self.runner_up_ratio

    @property
    def verdict(self) -> str:
        """``stats.verdict`` of the runner-up against what is shipped ("" without a runner-up), or
        "inconclusive" while a simpler format's tie with the fastest is undecided (``undecided``)."""
        if self.best is None:
            return ""
        if self.undecided is not None:
            return "inconclusive"
        if self.runner_up is None:
            return ""
        return verdict(self.runner_up_ratio, self.equivalence)

    @property
    def inconclusive(self) -> bool:
        return self.verdict == "inconclusive"

    @property
    def margin(self) -> float | None:
        """How much slower the runner-up is (0.25 = 25 %)."""
        ratio = self.runner_up_ratio
        return ratio.value - 1 if ratio is not None else None

    def line(self) -> str:
        text = self._line()
        if self.unverified:
            text = f"{text}; agreement UNVERIFIED: {self.unverified}; {VACUOUS_ADVICE}"
        return text

    def _line(self) -> str:
        if self.best is None:
            return f"{self.model} batch {self.batch} on {self.device}: nothing both ran and agreed"
        text = (
            f"{self.model} batch {self.batch} on {self.device}: ship {self.best.label} "
            f"({deliverable(self.best.ships)}, {self.best.figures()})"
        )
        if self.tie_note:
            text = f"{text}; {self.tie_note}"
        if self.undecided is not None:
            return f"{text}; {self._undecided_line()}"
        ratio = self.runner_up_ratio
        if self.tie_note or self.runner_up is None or ratio is None:
            return text
        runner = self.runner_up.label
        if self.verdict == "inconclusive":
            return (
                f"{text}; INCONCLUSIVE against {runner}, which takes {ratio.format()} its time: shipped "
                f"as the faster point estimate, not a tie; to settle it, {resolve_hint(ratio)}"
            )
        if self.verdict == "unpaired":
            return (
                f"{text}; runner-up {runner} takes {ratio.value:.2f}× its time (unpaired: not timed in "
                "one contest with it, no interval)"
            )
        said = {"tie": f"a tie: {tie_evidence(ratio, self.equivalence)}"}.get(self.verdict, self.verdict)
        return f"{text}; runner-up {runner} takes {ratio.format()} its time ({said})"

    def _undecided_line(self) -> str:
        """Why the undecided tie leaves the answer open, and what settles it."""
        assert self.undecided is not None and self.fastest is not None and self.best is not None
        ratio = self.undecided_ratio
        assert ratio is not None
        of = "its time" if self.fastest is self.best else f"the time of the fastest, {self.fastest.label}"
        if verdict(ratio, self.equivalence) != "slower":
            why = f"not a tie: its {TIE_CONFIDENCE:.0%} interval is too wide to tell"
        elif ratio.one_calm_of_several:
            why = f"slower in the one process calm for both ({ratio.timed} timed them; the others ran disturbed)"
        else:
            low, high = ratio.tie_bounds
            why = (f"slower, but its {TIE_CONFIDENCE:.0%} interval [{low:.2f}, {high:.2f}] crosses the "
                   f"±{self.equivalence:.0%} margin")  # fmt: skip
        return (
            f"INCONCLUSIVE against {self.undecided.label}, which takes {ratio.format()} {of}: {why}, and in "
            f"a tie it would ship instead; to settle it, {resolve_hint(ratio)}"
        )

    def to_dict(self) -> dict[str, Any]:
        def choice(c: Choice | None) -> dict[str, Any] | None:
            return c.to_dict() if c is not None else None

        return {
            "model": self.model,
            "batch": self.batch,
            "device": self.device,
            "best": choice(self.best),
            "runner_up": choice(self.runner_up),
            "margin": self.margin,
            "rejected": list(self.rejected),
            "not_measured": list(self.not_measured),
            "runner_up_ratio": self.runner_up_ratio.to_dict() if self.runner_up_ratio else None,
            "tie_note": self.tie_note,
            "undecided": choice(self.undecided),
            "undecided_ratio": self.undecided_ratio.to_dict() if self.undecided_ratio else None,
            "verdict": self.verdict,
            "unverified": self.unverified or None,
            "resolve": resolve_hint(self.open_ratio) if self.inconclusive else None,
            "summary": self.line(),
        }


def recommend(
    cases: Iterable[CaseResult],
    precisions: Sequence[str] | None = None,
    shippable: bool = False,
    equivalence: float = EQUIVALENCE,
) -> list[Recommendation]:
    """One recommendation per (model, batch, device kind), fastest passing format first.

    ``precisions`` keeps only those precisions; ``shippable`` keeps only formats that ship as a
    file (no model code at run time). The filters run before the ranking and the tie-break.
    ``equivalence``: the margin inside which two formats are a tie.
    """
    groups: dict[tuple[str, int, str], list[CaseResult]] = {}
    for case in distinct_formats(cases):
        if not considered(case, precisions, shippable):
            continue
        device = Target.parse(case.key.target).device_kind
        groups.setdefault((case.key.model, case.key.batch, device), []).append(case)
    out = []
    for (model, batch, device), members in sorted(groups.items()):
        timed = sorted(
            (c for c in members if c.status == "ok" and c.latency), key=lambda c: c.latency.fastest
        )
        ranked = [c for c in timed if c.passed]
        vacuous = [c for c in timed if c.verdict == "vacuous"]
        unverified = ""
        if not ranked and vacuous:  # an untrained model still gets a timing answer, labelled
            ranked = vacuous
            unverified = f"every format that agreed is vacuous ({vacuous[0].agreement.vacuous})"  # type: ignore[union-attr]
        ratios = against_fastest(ranked)
        passing, note = break_ties(ranked, ratios, equivalence)
        best = Choice(passing[0]) if passing else None
        runner_up = Choice(passing[1]) if len(passing) > 1 else None
        undecided, undecided_ratio = (
            undecided_tie(ranked, ratios, passing[0], equivalence) if ranked else (None, None)
        )
        rejected, shown = [], {id(c) for c in ranked}
        for c in timed:
            if best is not None and c.latency.fastest >= best.fastest:
                break
            if id(c) not in shown:
                rejected.append(_why_rejected(c, best))
        not_measured = sorted(
            {
                f"{c.key.target_label} {c.key.precision}: {c.status}: {c.message}"
                for c in members
                if c.status != "ok"
            }
        )
        out.append(
            Recommendation(
                model,
                batch,
                device,
                best,
                runner_up,
                tuple(rejected),
                tuple(not_measured),
                note,
                equivalence,
                Choice(undecided) if undecided is not None else None,
                undecided_ratio,
                unverified,
            )
        )
    return out


def unsettled(cases: Sequence[CaseResult]) -> list[Recommendation]:
    """The answers, with and without ``shippable``, that these cases leave inconclusive: what more
    processes of their contest would settle (a sweep's ``max_repeats`` runs them)."""
    return [r for shippable in (False, True) for r in recommend(cases, shippable=shippable) if r.inconclusive]


def unsettled_questions(cases: Sequence[CaseResult]) -> list[str]:
    """The questions (``model bN device``) whose answer, with or without ``shippable``, these cases
    leave inconclusive, each once."""
    return sorted({f"{r.model} b{r.batch} {r.device}" for r in unsettled(cases)})


def shipped_as(target: str) -> str | None:
    """What ships for ``target`` (``"ONNX file"``, ``".pt2 package"``, ...), or None when it needs
    the model's Python code at run time, or is a backend this version does not know."""
    backend = _known_backend(target)
    return backend.shipped if backend is not None else None


def _known_backend(target: str) -> Backend | None:
    """The target's backend, or None for one this version does not know (a newer run's)."""
    return BACKENDS.get(Target.parse(target).backend)


def considered(case: CaseResult, precisions: Sequence[str] | None, shippable: bool) -> bool:
    """Whether ``recommend`` weighs this case at all (the filters, before any ranking). Without
    ``precisions``, every precision but int8: an int8 file is graded by agreement measures, not the
    float tolerances, so ranking it against the float formats waits until it is asked for by name
    (and every view that ships a format, the report's included, follows the same rule)."""
    if precisions:
        if case.key.precision not in precisions:
            return False
    elif is_int8(case.key.precision):
        return False
    return not shippable or shipped_as(case.key.target) is not None


def distinct_formats(cases: Iterable[CaseResult]) -> list[CaseResult]:
    """``cases`` less each merged case that is its kept twin's graph (``details["merge"]["merged"]``
    false: the source said nothing merged) when that kept twin is among them."""
    cases = list(cases)
    kept = {replace(c.key, layout="merged") for c in cases if c.key.layout == "kept"}
    return [c for c in cases if not (same_graph_as_kept(c) and c.key in kept)]


def same_graph_as_kept(case: CaseResult) -> bool:
    """A merged case whose module is the kept one (its source's layout note says nothing merged)."""
    note = case.details.get("merge")
    return case.key.layout == "merged" and isinstance(note, dict) and note.get("merged") is False


def deliverable(ships: str | None) -> str:
    return ships or "needs the model's Python code at run time"


def simplicity(case: CaseResult) -> tuple[int, int, int, int, str]:
    """Lower is simpler to ship: eager PyTorch before anything compiled or exported, kept before
    merged, weights as PyTorch makes them before a converted memory format, a vendor-neutral runtime
    before a hardware vendor's own (``Backend.vendor_runtime``: ONNX Runtime before OpenVINO runs
    the same ONNX file on more hardware, and an ONNX file before a TensorRT engine bound to one GPU);
    then the target's name, so that equally simple formats are always picked in one order."""
    backend = _known_backend(case.key.target)
    return (
        0 if Target.parse(case.key.target).backend == "torch" else 1,
        0 if case.key.layout == "kept" else 1,
        0 if case.key.memory_format == "contiguous" else 1,
        1 if backend is not None and backend.vendor_runtime else 0,
        case.key.target,
    )


def against_fastest(ranked: Sequence[CaseResult]) -> list[Interval | None]:
    """Formats sorted fastest first -> each one's latency over the fastest's (``stats.pair``; None
    for the fastest itself), computed once for both ``break_ties`` and ``undecided_tie``."""
    return [pair(c, ranked[0]) for c in ranked]


def break_ties(
    passing: Sequence[CaseResult], ratios: Sequence[Interval | None], equivalence: float = EQUIVALENCE
) -> tuple[list[CaseResult], str]:
    """Formats sorted fastest first, with their ratios to the fastest (``against_fastest``) -> the
    same list with the simplest of those tied with the fastest moved to the front, and a note saying
    so ("" when the fastest stays first).

    Tied means ``stats.verdict`` of the paired ratio against the fastest is "tie": its interval lies
    inside the equivalence margin. An inconclusive or unpaired ratio never ties.
    """
    if len(passing) < 2:
        return list(passing), ""
    fastest = passing[0]
    tied = [
        (fastest, None),
        *((c, r) for c, r in zip(passing[1:], ratios[1:]) if verdict(r, equivalence) == "tie"),
    ]
    pick, ratio = min(tied, key=lambda tie: simplicity(tie[0]))
    if ratio is None:  # the fastest is the simplest of its ties
        return list(passing), ""
    f = fastest.key
    picked, first = simplicity(pick), simplicity(fastest)
    if picked[:3] < first[:3]:
        why = "shipping the simpler format"
    elif picked[:4] < first[:4]:
        why = "shipping the vendor-neutral runtime"
    else:
        why = "shipping the first of equally simple formats by target name"
    note = (
        f"a tie ({tie_evidence(ratio, equivalence)}) with the fastest, {f.target_label} {f.layout} "
        f"{f.precision} (this one takes {ratio.format()} its time): {why}"
    )
    return [pick, *(c for c in passing if c is not pick)], note


def undecided_tie(
    ranked: Sequence[CaseResult],
    ratios: Sequence[Interval | None],
    shipped: CaseResult,
    equivalence: float = EQUIVALENCE,
) -> tuple[CaseResult | None, Interval | None]:
    """Formats sorted fastest first with their ratios to the fastest (``against_fastest``), and the
    one shipped -> the simplest format simpler than it whose tie with the fastest this run could not
    decide, with that ratio; (None, None) when there is none.

    A tie would ship such a format instead, so "slower" has to mean beyond the margin (``material``
    ``stats.verdict``), whichever its rank: an interval across the margin's edge, one too wide to
    call, or one calm process of several leaves the answer open. Judging only the runner-up let a
    third format decide by a hair: run 20261202-120608 (2-core AMD EPYC, quiet) shipped OpenVINO
    for feature fusion at batch 1 because ONNX Runtime kept took 1.10x [1.08, 1.11] the fastest's
    time (90 % interval up to 1.109, just past ±10 %), the next run shipped ONNX Runtime kept on
    1.08x [1.06, 1.10], a tie, and both runs called their answer settled."""
    bar = simplicity(shipped)
    open_ = [
        (c, r)
        for c, r in zip(ranked[1:], ratios[1:])
        if simplicity(c) < bar and verdict(r, equivalence, material=True) == "inconclusive"
    ]
    return min(open_, key=lambda found: simplicity(found[0]), default=(None, None))


def _why_rejected(case: CaseResult, best: Choice | None) -> str:
    k = case.key
    faster = f" was {best.fastest / case.latency.fastest:.2f}x faster but" if best and case.latency else ""
    worst = case.agreement.worst if case.agreement else None
    if worst is None:
        reason = "has no agreement result"
    elif worst.nonfinite:
        reason = f"produced {worst.nonfinite} NaN/Inf values in {worst.name}"
    elif case.verdict == "vacuous":
        reason = f"is vacuous, not a pass ({case.agreement.vacuous})"  # type: ignore[union-attr]
    else:
        reason = f"failed agreement ({worst.name}: max abs {worst.max_abs:.1e}, needs atol {worst.required_atol:.1e} > {worst.atol:.0e})"
    return f"{k.target_label} {k.layout} {k.precision}{faster} {reason}"
