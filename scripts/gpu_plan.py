"""The GPU check's plan with a wall-time estimate per stage (scripts/gpu_check.sh prints it first).

    python scripts/gpu_plan.py [--budget SECONDS] STAGE...      (STAGE: a bundled sweep name or file)

Each stage is expanded and planned the way `ccnbench bench` runs it (contests, the workers they
share, the artifacts the parent builds), then priced with the wall times the first GPU run
measured on one NVIDIA H200 (2026-11-30, project commit 3562d1d, torch 2.11 + CUDA 13, 16 cores).
Where that run had no timing (ONNX Runtime CUDA, AOTInductor on CUDA, torch.compile without CUDA
graphs, ONNX exports, the float64 oracle on the GPU) the figure is an estimate and is marked `*`.
Nothing is run: on the CPU this is the dry run, and it takes a second or two.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ccnbench.backends import backend_of  # noqa: E402
from ccnbench.run import config as configuration  # noqa: E402
from ccnbench.run import contest, plan, sweep  # noqa: E402

# Measured on the H200 (console.log of the 2026-11-30 run): a fresh worker's Python, torch and CUDA
# start; the float64 oracle on the CPU per medium model by branch count; eager preparation; one
# inductor build with CUDA graphs (3-10 s, the first in a process paying the inductor import).
H200 = {
    "worker_start": 6.0,
    "oracle_cpu": {2: 3.0, 4: 11.0, 8: 20.0},
    "torch_prepare": 0.1,
    "graphs_build": 5.0,
}
# No H200 timing yet: estimates, printed with a `*`.
ESTIMATE = {
    "onnx_export": 8.0,  # one medium ONNX file, a single-threaded trace (here: ~13 s on a loaded core)
    "pt2_build": 90.0,  # one CUDA .pt2 package: triton kernels + a C++ build (CPU packages: 10-30 s)
    "ort_session": 2.0,  # an ORT CUDA session and its first run (cuDNN EXHAUSTIVE search)
    "aoti_load": 2.0,
    "compile_build": 5.0,  # per batch size: static graphs, one per size
    "oracle_gpu": 0.5,  # float64 on the device, per model
    "warm": 1.5,  # the runtimes' one-time costs per worker (context, handles, imports)
    "warm_compile": 4.0,  # ... plus inductor's import and a trivial compilation
    "report": 15.0,
}
_PREPARE = {  # target -> (seconds per preparation, measured on the H200?)
    "torch:cuda": (H200["torch_prepare"], True),
    "ort:cuda": (ESTIMATE["ort_session"], False),
    "ort:tensorrt": (ESTIMATE["ort_session"], False),
    "compile-graphs:cuda": (H200["graphs_build"], True),
    "compile:cuda": (ESTIMATE["compile_build"], False),
    "aoti:cuda": (ESTIMATE["aoti_load"], False),
    "tensorrt:cuda": (0.0, False),  # not on the lent machine: listed as unavailable, costs nothing
}


@dataclass
class Estimate:
    name: str
    lines: list[tuple[str, float, bool]] = field(default_factory=list)  # (what, seconds, measured)

    def add(self, what: str, seconds: float, measured: bool) -> None:
        self.lines.append((what, seconds, measured))

    @property
    def seconds(self) -> float:
        return sum(s for _, s, _ in self.lines)


def oracle_seconds(branches: int, on_gpu: bool) -> tuple[float, bool]:
    if on_gpu:
        return ESTIMATE["oracle_gpu"], False
    table = H200["oracle_cpu"]
    if branches in table:
        return table[branches], True
    return 2.5 * branches, True  # the measured figures grow ~2.5 s per branch


def estimate_stage(name: str, with_ort: bool = True, oracle_on_gpu: bool = True, jobs: int = 8) -> Estimate:
    """The wall time of one stage as ``ccnbench bench`` would run it on the GPU machine."""
    config = configuration.load_config(name)
    groups = [g for g in plan.expand(config) if with_ort or g.target.backend != "ort"]
    groups = [g for g in groups if str(g.target) != "tensorrt:cuda"]  # absent on the lent machine
    est = Estimate(config.name)
    files = {}
    for g in groups:
        fmt = backend_of(g.target).file_format
        if fmt:
            files.setdefault((fmt, g.source.digest, g.source.layout, g.precision), fmt)
    onnx = sum(1 for f in files.values() if f == "onnx")
    pt2 = sum(1 for f in files.values() if f == "pt2")
    if onnx:
        est.add(
            f"{onnx} ONNX exports in {min(jobs, onnx)} processes",
            math.ceil(onnx / jobs) * ESTIMATE["onnx_export"],
            False,
        )
    if pt2:
        est.add(
            f"{pt2} .pt2 builds in {min(jobs, pt2)} processes",
            math.ceil(pt2 / jobs) * ESTIMATE["pt2_build"],
            False,
        )
    contests, alone = contest.plan(groups)
    workers = sweep.contest_workers(contests, config.isolation)
    processes = len(workers) * config.protocol.repeats + len(sweep._worker_batches(alone, config.isolation))
    est.add(f"{processes} worker starts", processes * H200["worker_start"], True)
    compiles = any(g.target.backend.startswith("compile") for g in groups)
    est.add("runtime warm-up per worker", processes * ESTIMATE["warm_compile" if compiles else "warm"], False)
    models = {(g.source.label, g.source.digest): g.source.spec.branches for g in groups}
    oracle = [oracle_seconds(n, oracle_on_gpu) for n in models.values()]
    where = "the GPU" if oracle_on_gpu else "the CPU (cached on disk across precisions)"
    est.add(
        f"float64 oracle for {len(models)} models on {where}",
        sum(s for s, _ in oracle),
        all(m for _, m in oracle),
    )
    for target in sorted({str(g.target) for g in groups}):
        seconds, measured = _PREPARE.get(target, (ESTIMATE["compile_build"], False))
        count = sum(1 for g in groups if str(g.target) == target)
        per_group = seconds * (len(config.batches) if target == "compile:cuda" else 1)
        twice = 2 if config.protocol.memory_pass else 1  # the memory pass prepares each member again
        label = f"prepare {count} x {target}" + (" (x2: memory pass)" if twice == 2 else "")
        est.add(label, count * per_group * twice, measured)
    p = config.protocol  # per batch size: the rounds, plus each member's warm-up and first block
    timing = sum(
        len(m.groups[0].batches)
        * (p.contest_seconds + len(m.groups) * (p.warmup_seconds + 2 * p.block_seconds))
        for m in contests
    )
    est.add(f"timing: {len(contests)} contests, <= {p.contest_seconds:g} s per batch size", timing, True)
    return est


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="+")
    parser.add_argument("--budget", type=float, default=None, help="seconds the sweeps may take")
    parser.add_argument("--jobs", type=int, default=8, help="parallel build processes on the GPU machine")
    args = parser.parse_args(argv)
    print("-- estimates from the H200 run of 2026-11-30; * = no H200 timing yet, an estimate")
    total = 0.0
    for name in args.stages:
        config = configuration.load_config(name)
        groups = plan.expand(config)
        print(f"-- plan {config.name}: {len(groups)} groups, {sum(len(g.batches) for g in groups)} cases")
        for g in groups:
            print(
                f"   {g.source.label} {g.source.layout} {g.target} {g.precision} batch {','.join(map(str, g.batches))}"
            )
        est = estimate_stage(name, jobs=args.jobs)
        for what, seconds, measured in est.lines:
            print(f"     {what:<62} {seconds:6.0f} s{'' if measured else ' *'}")
        no_ort = estimate_stage(name, with_ort=False, jobs=args.jobs).seconds
        total += est.seconds
        budget = f" of {args.budget:.0f} s" if args.budget else ""
        cut = "  <- past the deadline: cut" if args.budget and total > args.budget else ""
        ort = f" ({no_ort:.0f} s without onnxruntime-gpu)" if no_ort < est.seconds else ""
        print(f"   = {est.seconds:.0f} s{ort}; cumulative {total:.0f} s{budget}{cut}")
    print(f"-- report over the finished stages ~{ESTIMATE['report']:.0f} s *")
    names = [configuration.load_config(n).name for n in args.stages]
    print(
        f"-- dropped first when the deadline comes (the stage in flight is cut, later ones skipped): {', then '.join(reversed(names))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
