"""`ccnbench check`: does every target agree with the float64 oracle? (No timing.)"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ccnbench.answers import tables
from ccnbench.measure.agreement import VACUOUS_ADVICE
from ccnbench.results import CaseResult
from ccnbench.run import config, plan
from ccnbench.run.case_group import run_group
from ccnbench.run.plan import CaseGroup


def run(
    groups: Sequence[CaseGroup], on_result: Callable[[CaseGroup, CaseResult], None] | None = None
) -> list[CaseResult]:
    """Run every group in this process and collect the results."""
    results = []
    for group in groups:
        for result in run_group(group):
            results.append(result)
            if on_result:
                on_result(group, result)
    return results


def exit_code(results: Sequence[CaseResult]) -> int:
    """1 if any target that could run failed, crashed or disagreed; unavailable targets don't count,
    nor does the target that served as the reference (it has nothing to disagree with), nor a
    ``vacuous`` case (it could not have disagreed: ``problem_lines`` says so and what to do)."""
    return int(any(r.verdict in ("failed", "timeout", "FAIL") for r in results))


def unchecked_note(results: Sequence[CaseResult]) -> str | None:
    """What to tell the user when some cases were only compared with themselves."""
    references = sorted({f"{r.key.model} on {r.key.target}" for r in results if r.is_reference})
    if not references:
        return None
    return (
        f"nothing independent was checked for {', '.join(references)}: that target computed the reference "
        "itself; give --model file.py:factory (the PyTorch module it came from) or saved outputs "
        "(--load-inputs/--load-outputs) to check the file against something real"
    )


def planned(flags: Mapping[str, Any]) -> list[CaseGroup]:
    """What ``ccnbench check`` runs: its flags (flag -> value, None when not given) through the
    route ``bench`` takes (``config.from_command_line``), planned untimed."""
    return plan.expand(config.from_command_line(flags, None), timed=False)


def summary(results: Sequence[CaseResult]) -> str | None:
    """How many cases agree with an independent oracle ("nothing could run" when none ran)."""
    graded = [r for r in results if r.status != "unavailable" and not r.is_reference]
    if graded:
        return f"{sum(r.passed for r in graded)}/{len(graded)} cases agree with the oracle"
    return None if any(r.is_reference for r in results) else "nothing could run"


def problem_lines(cases: Sequence[CaseResult]) -> list[tuple[str, str]]:
    """(line, style) to print below a table: unavailable targets (dim), failures (red), then
    cases graded ``vacuous`` (yellow)."""
    unavailable = [(line, "dim") for line in tables.unavailable_lines(cases)]
    failures = [(line, "red") for line in tables.failure_lines(cases)]
    return unavailable + failures + [(line, "yellow") for line in vacuous_lines(cases)]


def vacuous_lines(cases: Sequence[CaseResult]) -> list[str]:
    """One line per model and batch whose cases are ``vacuous``: why, and what to do. Not a
    failure (the exit code stays 0, as for ``reference``), and not a pass (not counted as one)."""
    reasons: dict[tuple[str, int], str] = {}
    for r in cases:
        if r.verdict == "vacuous" and r.agreement is not None:
            reasons.setdefault((r.key.model, r.key.batch), r.agreement.vacuous)
    lines = [f"{model} (batch {batch}): vacuous, {why}" for (model, batch), why in reasons.items()]
    if lines:
        lines.append(f"vacuous: within tolerance, but a wrong file would be too; {VACUOUS_ADVICE}")
    return lines
