"""What the regression gate compares: rows read from a ccnbench run or a pytest-benchmark file,
and whether two of them were measured like with like.

A row's metrics (``compare.METRICS``) are its fastest call, median, p99 and samples/s at the
median; a pytest-benchmark test's are its ``stats.min``, ``stats.median`` and the rate at that.
A run's row carries its ratio to the run's reference case (``derived.reference_key``), paired
within their contest where ``stats.pair`` pairs them, and the per-process log ratios the gate's
t-test takes as its units. A pytest-benchmark file is read by its ``extra_info`` where that
names a case, else by test name, and its machine from its ``machine_info``. A row of a run whose
shards were measured on different machines (``shard.mixed_machines``) carries that as the reason
no comparison may judge its speed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccnbench import environment, results, shard
from ccnbench.answers import stats
from ccnbench.answers.derived import is_reference, reference_key
from ccnbench.environment import Environment
from ccnbench.errors import UsageError
from ccnbench.results import CaseKey, CaseResult, RunResult


@dataclass(frozen=True)
class Row:
    """One comparable measurement: a case of a run or one pytest-benchmark test."""

    key: str
    target: str
    status: str
    passed: bool | None
    metrics: Mapping[str, float]
    reference_key: str | None = None
    ratio: stats.Interval | None = None  # latency / reference latency, paired within its contest
    processes: tuple[float, ...] = ()  # per contest process: its log ratio of fastest calls to the reference
    pool: str = ""  # rows whose process variances are pooled: one target at one batch size
    # Why no comparison may judge its speed, whatever the flags: its run's shards were measured on
    # different machines ("shards were measured on different machines (differ in: cpu)").
    speed_refused: str = ""
    vacuous: bool = False  # within tolerance of a reference no wrong file could fail (verdict ``vacuous``)


@dataclass(frozen=True)
class Side:
    """One side of a comparison as read from disk: its kind, rows and (for a run) environment."""

    kind: str
    rows: dict[str, Row]
    environment: Environment | None = None
    machine: dict[str, Any] | None = None  # a pytest-benchmark file's machine, from its machine_info


def load_side(path: Path | str) -> Side:
    """A ccnbench run (directory, the shards of one sweep, or results.json) or a pytest-benchmark
    JSON file, as rows, with the run's environment or the file's machine."""
    path = Path(path)
    if path.is_dir():  # a run directory, or the shards of one sweep: read as one run
        runs = shard.load_runs([path])
        if len(runs) != 1:
            raise UsageError(f"{path} holds {len(runs)} different runs; give one run (or the shards of one)")
        return Side("ccnbench", rows_from_run(runs[0]), runs[0].environment)
    data = results.read_json(path)
    if isinstance(data, dict) and "benchmarks" in data and "machine_info" in data:
        machine = environment.benchmark_machine(data)
        return Side("pytest-benchmark", _rows_from_pytest_benchmark(data), machine=machine)
    run = RunResult.from_dict(data, source=str(path))
    return Side("ccnbench", rows_from_run(run), run.environment)


def machine_differences(base: Side, new: Side) -> list[str]:
    """Why the two sides' speeds are not comparable ([] when like with like); pytest-benchmark
    files are judged by their own ``machine_info``."""
    if base.environment is not None and new.environment is not None:
        return environment.differences(base.environment, new.environment)
    if base.kind == new.kind == "pytest-benchmark":
        return environment.benchmark_differences(base.machine, new.machine)
    return []


def rows_from_run(run: RunResult) -> dict[str, Row]:
    cases = {c.key: c for c in run.cases}
    mixed = shard.mixed_machines(run)
    refused = mixed.reason() if mixed else ""
    return {str(c.key): _row(c, cases.get(reference_key(c.key)), refused) for c in run.cases}


def _row(case: CaseResult, reference: CaseResult | None, refused: str = "") -> Row:
    """A case as the gate reads it; its ratio to the reference only where the two pair (one
    contest of one run) with a computable interval, and then its processes as the test's units."""
    metrics = {}
    if case.status == "ok" and case.latency is not None:
        lat = case.latency
        metrics = {"fastest": lat.fastest, "p50": lat.median, "p99": lat.p99, "throughput": lat.throughput}
    own = is_reference(case.key)
    ratio = None if own else stats.pair(case, reference)
    paired = ratio is not None and ratio.computable and ratio.scope != stats.UNPAIRED
    return Row(
        str(case.key),
        case.key.target,
        case.status,
        case.agreement.passed if case.agreement else None,
        metrics,
        None if own else str(reference_key(case.key)),
        ratio if paired else None,
        stats.process_ratios(case, reference) if paired else (),
        f"{case.key.target}/b{case.key.batch}",
        refused,
        case.verdict == "vacuous",
    )


def _rows_from_pytest_benchmark(data: dict[str, Any]) -> dict[str, Row]:
    rows = {}
    for bench in data.get("benchmarks", []):
        stats, info = bench.get("stats", {}), bench.get("extra_info", {})
        batch = int(info.get("batch", 1))
        metrics = {"fastest": stats["min"] * 1e3} if "min" in stats else {}
        if "median" in stats:
            metrics |= {"p50": stats["median"] * 1e3, "throughput": batch / stats["median"]}
        if {"model", "layout", "target"} <= set(info):
            key = CaseKey(
                info["model"], "", info["layout"], info["target"], info.get("precision", "fp32"), batch
            )
            ref = None if is_reference(key) else str(reference_key(key))
            rows[str(key)] = Row(str(key), key.target, "ok", None, metrics, ref)
        else:
            name = bench.get("fullname") or bench["name"]
            rows[name] = Row(name, "", "ok", None, metrics)
    return rows
