"""`ccnbench report --format`: one run as a dashboard's file, for github-action-benchmark or Bencher.

The figure exported is what holds from run to run: each timed case's time over eager PyTorch's on
the same device, model, layout, precision and batch (``derived.speedup_interval`` inverted, so
smaller is better), with its 95 % interval. Raw milliseconds from CI runners that change under a
dashboard would be the comparison ``compare`` refuses (speed only between runs on one machine).
Each benchmark is named ``<case key> @ <machine>``, the machine being the CPU's name (a CUDA case:
the GPU's) and the run's ``machine_id``, so a dashboard never draws one line through two machines.

Cases whose outputs disagreed with the oracle are left out, not exported with a note: a speed of
wrong outputs is not one to track, and a note would show only on hover while the line looked
fine. ``ccnbench report`` says which cases those are; the command counts them.

References (the formats as their documentation gives them):
- github-action-benchmark README, "customBiggerIsBetter and customSmallerIsBetter" (https://github.com/benchmark-action/github-action-benchmark#readme):
  an array of objects with ``name``, ``unit``, ``value``, optional ``range`` and ``extra``.
- github-action-benchmark src/extract.ts (``BenchmarkResult``, zod schema): ``value`` a number,
  ``range`` and ``extra`` strings; src/default_index_html.ts shows a point as ``value unit (range)``
  with ``extra`` on the tooltip's next lines.
- Bencher Metric Format (https://bencher.dev/docs/reference/bencher-metric-format/): benchmark
  name -> measure -> ``value`` with optional ``lower_value`` / ``upper_value``; a measure slug at
  most 64 characters, a benchmark name at most 1024.
- How to Track Custom Benchmarks with Bencher (https://bencher.dev/docs/how-to/track-custom-benchmarks/):
  a measure named by a slug that does not exist yet is created; the built-in ``latency`` is in
  nanoseconds and ``throughput`` in operations / second.
- Testbeds with bencher run (https://bencher.dev/docs/explanation/testbeds/): ``--testbed`` names
  the environment; thresholds only use results of one testbed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccnbench import fileio, shard
from ccnbench.answers.derived import fastest_text, index, is_reference, significant, speedup_interval
from ccnbench.answers.stats import UNPAIRED, WITHIN, Interval, fastest_interval
from ccnbench.backends.base import Target
from ccnbench.environment import Environment, known_machine
from ccnbench.errors import ResultsError, UsageError
from ccnbench.measure.samples import LatencyStats
from ccnbench.results import CaseKey, RunResult

GITHUB_ACTION_BENCHMARK = "github-action-benchmark"
BENCHER = "bencher"
FORMATS = (GITHUB_ACTION_BENCHMARK, BENCHER)

# The `tool` input github-action-benchmark's workflow step needs for this file: a ratio of times, smaller is better.
GITHUB_TOOL = "customSmallerIsBetter"
UNIT = "× eager PyTorch time"
# A custom Bencher measure (created on first upload): the ratio has no unit, so Bencher's built-in
# `latency` (nanoseconds) would misname it.
RATIO_MEASURE = "time-vs-eager"
# Bencher's built-in measure, in nanoseconds: the fastest call, a format's own speed. It is only
# meaningful between runs on one machine; the benchmark's name carries the machine, so Bencher
# never compares it across two.
LATENCY_MEASURE = "latency"
NS_PER_MS = 1e6


@dataclass(frozen=True)
class Entry:
    """One exported case: ``ratio`` is its time over eager PyTorch's (over 1: slower than eager);
    ``latency`` its timing, whose fastest call the tooltip and Bencher's ``latency`` show."""

    key: CaseKey
    machine: str
    threads: int
    ratio: Interval
    latency: LatencyStats

    @property
    def name(self) -> str:
        return f"{self.key} @ {self.machine}"


@dataclass(frozen=True)
class Export:
    """A run's entries, and the cases left out with the reason for each."""

    entries: tuple[Entry, ...]
    left_out: tuple[tuple[CaseKey, str], ...] = ()

    def left_out_text(self) -> str | None:
        """``left out 3 cases: 2 whose outputs disagree with the oracle, 1 not timed``; None when none."""
        if not self.left_out:
            return None
        reasons: dict[str, int] = {}
        for _, reason in self.left_out:
            reasons[reason] = reasons.get(reason, 0) + 1
        counts = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
        return f"left out {len(self.left_out)} case{'s' if len(self.left_out) != 1 else ''}: {counts}"


@dataclass(frozen=True)
class Written:
    path: Path
    export: Export


NOT_TIMED = "not timed (failed, timed out or unavailable)"
DISAGREE = "whose outputs disagree with the oracle"
NO_REFERENCE = "without eager PyTorch timed beside them"


def machine_label(env: Environment, key: CaseKey) -> str:
    """A short, stable name of the machine a case ran on: the CPU's name (the GPU's for a CUDA
    case) and the run's ``machine_id`` (``AMD EPYC 47621928713e``). The id hashes the hardware, so
    two machines whose CPUs share a name still get two labels. Only for a run with a fingerprint
    (``known_machine``): :func:`entries` refuses others."""
    device = env.gpus[0].name if Target.parse(key.target).is_cuda and env.gpus else env.cpu
    return f"{_short_name(device)} {env.machine_id}"


def _short_name(device: str) -> str:
    """``Intel(R) Xeon(R) CPU @ 2.20GHz`` -> ``Intel Xeon``: the marks and the clock add length, not identity."""
    text = re.sub(r"\((R|TM|tm|r)\)|@.*$|\bCPU\b|\bProcessor\b|\b\d+-Core\b", " ", device)
    return " ".join(text.split()) or device


def entries(run: RunResult) -> Export:
    """Every timed case of ``run`` but eager PyTorch's own, as its time over eager PyTorch's.

    A run recorded before machine fingerprints is a ResultsError: its benchmarks could not be
    named by machine, and a dashboard would draw one line through two."""
    if not known_machine(run.environment):
        raise ResultsError(
            f"run {run.run_id!r} was recorded before machine fingerprints: a dashboard could not tell its "
            "machine from another's; rerun it with this ccnbench"
        )
    cases = index(run.cases)
    found, left_out = [], []
    for case in run.cases:
        if is_reference(case.key):
            continue
        if case.status != "ok" or case.latency is None:
            left_out.append((case.key, NOT_TIMED))
            continue
        if case.verdict == "FAIL":
            left_out.append((case.key, DISAGREE))
            continue
        speedup = speedup_interval(cases, case)
        if speedup is None or not 0 < speedup.value < math.inf:
            left_out.append((case.key, NO_REFERENCE))
            continue
        machine = machine_label(run.environment, case.key)
        found.append(Entry(case.key, machine, run.environment.threads, speedup.inverse(), case.latency))
    return Export(tuple(found), tuple(left_out))


def _bounds(interval: Interval | None) -> tuple[float, float] | None:
    """An interval's bounds where it has some (not unpaired, computable)."""
    if interval is None or interval.scope == UNPAIRED or not interval.computable:
        return None
    return interval.low, interval.high


def interval_text(ratio: Interval) -> str | None:
    """The ratio's interval as a tooltip prints it: ``95% interval [0.252, 0.300]``, plus
    ``within one process`` where it rests on one; None where it has none."""
    bounds = _bounds(ratio)
    if bounds is None:
        return None
    text = f"95% interval [{significant(bounds[0])}, {significant(bounds[1])}]"
    return text + (" within one process" if ratio.scope == WITHIN else "")


def _how_paired(ratio: Interval) -> str:
    if ratio.scope == UNPAIRED:
        return "unpaired: not timed in one contest with eager PyTorch, so no interval"
    processes = f"{ratio.processes} process{'es' if ratio.processes != 1 else ''}"
    return f"paired over {processes}" + ("" if ratio.computable else ", interval not computable")


def github_action_benchmark(export: Export) -> list[dict[str, Any]]:
    """The entries as github-action-benchmark's ``customSmallerIsBetter`` JSON: ``value`` the
    ratio, ``range`` its interval (left out where there is none), ``extra`` the tooltip's lines."""
    rows = []
    for entry in export.entries:
        ratio = entry.ratio
        extra = [
            f"time over eager PyTorch's: {significant(ratio.value)}"
            + (f" ({interval_text(ratio)})" if interval_text(ratio) else ""),
            _how_paired(ratio),
            f"fastest call: {fastest_text(entry.latency)} ms",
            f"machine: {entry.machine}, {entry.threads} thread{'s' if entry.threads != 1 else ''}",
        ]
        row: dict[str, Any] = {"name": entry.name, "unit": UNIT, "value": ratio.value}
        if interval_text(ratio):
            row["range"] = interval_text(ratio)
        row["extra"] = "\n".join(extra)
        rows.append(row)
    return rows


def _metric(value: float, bounds: tuple[float, float] | None) -> dict[str, float]:
    metric = {"value": value}
    if bounds is not None:
        metric["lower_value"], metric["upper_value"] = bounds
    return metric


def bencher(export: Export) -> dict[str, dict[str, dict[str, float]]]:
    """The entries as Bencher Metric Format: per benchmark, the ratio under ``RATIO_MEASURE`` and
    the fastest call in nanoseconds under ``latency``, each with its interval where there is one."""
    out = {}
    for entry in export.entries:
        fastest = _bounds(fastest_interval(entry.latency))
        out[entry.name] = {
            RATIO_MEASURE: _metric(entry.ratio.value, _bounds(entry.ratio)),
            LATENCY_MEASURE: _metric(
                entry.latency.fastest * NS_PER_MS,
                (fastest[0] * NS_PER_MS, fastest[1] * NS_PER_MS) if fastest else None,
            ),
        }
    return out


def render(fmt: str, export: Export) -> Any:
    """The JSON a format's file holds."""
    if fmt == GITHUB_ACTION_BENCHMARK:
        return github_action_benchmark(export)
    if fmt == BENCHER:
        return bencher(export)
    raise _unknown(fmt)


def _unknown(fmt: str) -> UsageError:
    return UsageError(f"unknown dashboard format {fmt!r}; choose from {', '.join(FORMATS)}")


def one_run(paths: Sequence[Path | str]) -> RunResult:
    """The one run a dashboard file holds: ``paths`` read as ``report`` reads them, the shards of
    one sweep combined. Several runs are a UsageError; so are shards measured on different
    machines or software (``shard.mixed_machines``): the combined run keeps its first part's
    environment, which would name the other parts' benchmarks by the wrong machine."""
    runs = shard.load_runs(paths)
    if len(runs) != 1:
        raise UsageError(
            f"a dashboard file holds one run, and these paths hold {len(runs)} that are not the shards "
            "of one sweep: export each run on its own"
        )
    mixed = shard.mixed_machines(runs[0])
    if mixed is not None:
        raise UsageError(
            f"a dashboard names each benchmark by the machine it ran on, and {mixed.reason()}: run the "
            "shards on one kind of runner, or the sweep unsplit on each"
        )
    return runs[0]


def write_dashboard(paths: Sequence[Path | str], fmt: str, out: Path | str | None = None) -> Written:
    """Write one run's dashboard file in ``fmt`` to ``out`` (default ``<first path>/<fmt>.json``,
    beside a results.json when given one), atomically."""
    if fmt not in FORMATS:
        raise _unknown(fmt)  # before reading the runs
    if not paths:
        raise UsageError("no run directories given")
    export = entries(one_run(paths))
    first = Path(paths[0])
    path = (
        Path(out) if out is not None else (first.parent if first.suffix == ".json" else first) / f"{fmt}.json"
    )
    text = json.dumps(render(fmt, export), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    fileio.write_text(path, text)
    return Written(path, export)
