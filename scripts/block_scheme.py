"""Block scheme experiment: the kept/merged ratio of one model measured four ways in one process.

Usage: python scripts/block_scheme.py [TARGET] [BATCH]. Compares 50 ms and 10 ms blocks (first call
discarded), per-iteration alternation and sequential measurement; see docs/measurement.md. Needs a
quiet machine: on a loaded one every scheme drifts.
"""

import sys
import time

import numpy as np

from ccnbench.backends import backend_of, parse_targets
from ccnbench.measure.timing import Protocol, bound_call, measure, stage, time_block
from ccnbench.run import plan, selection

target = sys.argv[1] if len(sys.argv) > 1 else "torch:cpu"
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
sources = selection.sources(preset="small", variants="decision", layouts_="all")
groups = plan.case_groups(sources, parse_targets([target]), ["fp32"], [batch], "artifacts", threads=1)
calls, runners = [], []
for g in groups:
    r = backend_of(g.target).prepare(g.source, g.target, g.options)
    runners.append(r)
    calls.append(bound_call(r, stage(g.source.make_inputs(batch, 0), r)))
layouts = [g.source.layout for g in groups]
for c in calls:
    for _ in range(20):
        c()


def blocks(sec, total=2.0):
    ms = [[], []]
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < total:
        for i in (0, 1):
            ms[i].append(time_block(calls[i], runners[i], sec).median)
    return np.median(np.array(ms[0]) / np.array(ms[1]))


def per_iter(total=2.0):
    ms = [[], []]
    t0 = time.perf_counter()
    clk = time.perf_counter_ns
    while time.perf_counter() - t0 < total:
        for i in (0, 1):
            a = clk()
            calls[i]()
            ms[i].append(clk() - a)
    return np.median(ms[0]) / np.median(ms[1])


def sequential():
    m = [
        measure(runners[i], groups[i].source.make_inputs(batch, 0), Protocol(min_seconds=1.0)).latency.median
        for i in (0, 1)
    ]
    return m[0] / m[1]


print(target, "batch", batch, layouts[0], "/", layouts[1])
for rep in range(3):
    print(
        f"rep {rep}: block50ms {blocks(0.05):.3f}  block10ms {blocks(0.01):.3f}  per-iteration {per_iter():.3f}  sequential {sequential():.3f}",
        flush=True,
    )
