"""Do contest members disturb each other? Each runtime timed interleaved with the others vs alone.

    PYTHONPATH=. python scripts/interference.py                      # cpu-default threads, 5+5 processes
    PYTHONPATH=. python scripts/interference.py --settle 0           # without the settle (before issue 20)
    PYTHONPATH=. python scripts/interference.py --processes 2 --rounds 6 --preset tiny   # a smoke run

A contest times torch, torch.compile, ONNX Runtime and OpenVINO in one process, block after
block (``ccnbench.run.contest``). A runtime's idle threads may keep spinning after its block (ONNX
Runtime's intra-op pool, OpenMP and TBB workers) and slow the member timed next. This script
measures that with the contest code itself, at the thread count of the ``cpu-default`` sweep
(``--threads`` for another):

- *interleaved*: ``--processes`` fresh processes each run one contest of every ``--targets``
  member (the same model, layout and batch), and every block is labelled with the member that
  ran just before it, so each member's blocks split into "after torch:cpu", "after ort:cpu", ...;
- *alone*: ``--processes`` fresh processes per member run a contest of that member only (same
  protocol, same settle, nothing else prepared in the process).

Per process a member's figure is the median of its block medians (of the blocks after one
predecessor, for interleaved). Per member the alone processes give a mean and a 95 % t-interval
between processes (processes have speed modes, so K processes are K samples); a member timed
after another runtime *agrees* with alone when the mean of its per-process figures lies inside
that interval. The kinds of process alternate in a seeded order so slow drifts hit both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# Two-sided 95 % Student t quantiles by degrees of freedom (K - 1 processes).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="torch:cpu,compile:cpu,ort:cpu,openvino:cpu")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--variant", default="model")
    parser.add_argument("--layout", default="kept")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per kind (>= 5 to judge)")
    parser.add_argument(
        "--rounds", type=int, default=30, help="timed rounds per process (a block per member each)"
    )
    parser.add_argument(
        "--settle", type=float, default=None, help="longest settle, s (default: the protocol's)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per runtime (default: the cpu-default sweep's)"
    )
    parser.add_argument("--artifacts", default=None, help="ONNX files (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "all" or one target
    parser.add_argument("--process", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = args.threads or _sweep_threads()
    if args.worker:
        _worker(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="ccnbench-interference-") as tmp:
        args.artifacts = args.artifacts or tmp
        return _parent(args)


def _sweep_threads() -> int:
    """The thread count ``make bench`` times with: the cpu-default sweep's, else every physical core."""
    from ccnbench.environment import default_threads
    from ccnbench.run.config import load_config

    return load_config("cpu-default").threads or default_threads()


# --- the worker: one contest in this process, every block labelled with its predecessor ---------


def _worker(args: argparse.Namespace) -> None:
    from ccnbench.backends import parse_targets
    from ccnbench.measure.timing import DEFAULT
    from ccnbench.run import contest, plan, selection

    protocol = _protocol(DEFAULT, args)
    targets = parse_targets(args.targets if args.worker == "all" else args.worker)
    sources = selection.sources(preset=args.preset, variants=args.variant, layouts_=args.layout, seed=0)
    groups = plan.case_groups(
        sources,
        targets,
        ["fp32"],
        [args.batch],
        Path(args.artifacts),
        threads=args.threads,
        protocol=protocol,
    )
    names = {}
    blocks: list[dict[str, Any]] = []
    timed = contest.time_block

    settle, waited = contest.settle, [0.0]

    def labelled(call: Any, runner: Any, seconds: float, *where: int) -> Any:
        block = timed(call, runner, seconds, *where)
        previous = blocks[-1]["target"] if blocks else None
        blocks.append({"target": names[id(runner)], "after": previous, "median": block.median,
                       "settle_ms": waited[0] * 1000})  # fmt: skip
        return block

    def timed_settle(limit: float) -> float:
        waited[0] = settle(limit)
        return waited[0]

    contest.time_block, contest.settle = labelled, timed_settle  # the contest's own loop, observed
    prepare = contest.case_group.prepare

    def named(group: Any, **kwargs: Any) -> Any:
        prepared = prepare(group, **kwargs)
        names[id(prepared.runner)] = str(group.target)
        return prepared

    contest.case_group.prepare = named
    cases = list(contest.run_contest(contest.Contest("interference", tuple(groups)), process=args.process))
    failed = [f"{c.key}: {c.message}" for c in cases if c.status != "ok"]
    print(json.dumps({"blocks": blocks, "failed": failed}))


def _protocol(base: Any, args: argparse.Namespace) -> Any:
    # Exactly ``rounds`` rounds (no stopping on convergence or time): every member gets as many
    # blocks alone as interleaved.
    protocol = replace(base, contest_seconds=0.0, min_rounds=args.rounds, repeats=1)
    return protocol if args.settle is None else replace(protocol, settle_seconds=args.settle)


# --- the parent: start the processes, collect, judge ---------------------------------------------


def _parent(args: argparse.Namespace) -> int:
    from ccnbench.run import selection

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    start = time.perf_counter()
    # Export once here, so the workers reuse one ONNX file instead of racing to write it.
    for source in selection.sources(preset=args.preset, variants=args.variant, layouts_=args.layout, seed=0):
        source.artifact("fp32", "fp32", 18, Path(args.artifacts))
    kinds = ["all", *targets]
    runs = [(kind, p) for p in range(args.processes) for kind in kinds]
    random.Random(0).shuffle(runs)  # alone and interleaved processes alternate in a seeded order
    records: dict[str, list[list[dict[str, Any]]]] = {k: [] for k in kinds}
    for n, (kind, process) in enumerate(runs, 1):
        command = [sys.executable, __file__, "--worker", kind, "--process", str(process), *_passed(args)]
        out = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode != 0:
            sys.exit(f"worker {kind} #{process} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        if data["failed"]:
            sys.exit(f"worker {kind} #{process}: {'; '.join(data['failed'])}")
        records[kind].append(data["blocks"])
        print(
            f"[{time.perf_counter() - start:5.0f} s] {n}/{len(runs)} {kind} process {process}",
            file=sys.stderr,
        )
    settle = args.settle if args.settle is not None else _default_settle()
    report = _judge(targets, records)
    header = (
        f"{args.variant} {args.layout} @{args.preset}, batch {args.batch}, {args.threads} thread(s) "
        f"per runtime, settle at most {settle * 1000:g} ms, {args.processes} processes per kind, "
        f"{args.rounds} rounds each, {time.perf_counter() - start:.0f} s in all"
    )
    print(_markdown(header, report))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"setup": header, "rows": report, "records": records}, indent=1)
        )
    return 0


def _passed(args: argparse.Namespace) -> list[str]:
    passed = ["--targets", args.targets, "--preset", args.preset, "--variant", args.variant, "--layout",
              args.layout, "--batch", str(args.batch), "--rounds", str(args.rounds), "--artifacts",
              args.artifacts, "--threads", str(args.threads)]  # fmt: skip
    return passed + (["--settle", str(args.settle)] if args.settle is not None else [])


def _default_settle() -> float:
    from ccnbench.measure.timing import DEFAULT

    return DEFAULT.settle_seconds


def _per_process(processes: list[list[dict[str, Any]]], target: str, after: str | None) -> list[float]:
    """One figure per process: the median of ``target``'s block medians (after ``after``; any when None)."""
    values = []
    for blocks in processes:
        mine = [
            b["median"] for b in blocks if b["target"] == target and (after is None or b["after"] == after)
        ]
        if mine:
            values.append(statistics.median(mine))
    return values


def _interval(values: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = _T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _judge(targets: list[str], records: dict[str, list[list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    rows = []
    for target in targets:
        alone = _per_process(records[target], target, None)
        mean, low, high = _interval(alone)
        for after in [*[t for t in targets if t != target], None]:
            together = _per_process(records["all"], target, after)
            if not together:
                continue
            value, t_low, t_high = _interval(together)
            settles = [b["settle_ms"] for p in records["all"] for b in p
                       if b["target"] == target and (after is None or b["after"] == after)]  # fmt: skip
            rows.append({
                "target": target, "after": after or "any member",
                "alone_ms": mean, "alone_low": low, "alone_high": high, "alone_processes": len(alone),
                "interleaved_ms": value, "interleaved_low": t_low, "interleaved_high": t_high,
                "interleaved_processes": len(together), "ratio": value / mean,
                "agrees": bool(low <= value <= high), "settle_ms": statistics.fmean(settles),
            })  # fmt: skip
    return rows


def _markdown(header: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"Interleaved vs alone: {header}",
        "",
        "| member | timed after | alone ms [95 % interval] (K) | interleaved ms [95 % interval] (K) | ratio | agrees | settle ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['after']} | {r['alone_ms']:.3f} [{r['alone_low']:.3f}, {r['alone_high']:.3f}] "
            f"({r['alone_processes']}) | {r['interleaved_ms']:.3f} [{r['interleaved_low']:.3f}, "
            f"{r['interleaved_high']:.3f}] ({r['interleaved_processes']}) | {r['ratio']:.3f} | "
            f"{'yes' if r['agrees'] else 'NO'} | {r['settle_ms']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
