"""Hand-made results for the compare, recommend and report tests, and a protocol for sweep tests."""

from dataclasses import replace
from pathlib import Path

from ccnbench.environment import collect
from ccnbench.measure.agreement import Agreement, OutputAgreement
from ccnbench.measure.timing import QUICK, LatencyStats
from ccnbench.results import CaseKey, CaseResult, RunResult, new_run

#: The repository and the tests' fixtures, wherever a test lies in the tree (tests mirror the package).
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

#: Two back-to-back `bench --config ci-quick` runs of one tree on a 2-core AMD EPYC: their
#: fastest calls agreed, their medians moved with the host's load (the fixture's README.md).
PAIR = FIXTURES / "ci-quick-amd-epyc-2026-12-06"
#: The pair's case whose median moved most (0.219 -> 0.350 ms) while its fastest call did not.
PAIR_CASE = "multitask-n3@tiny/kept/ort:cpu/fp32/b1"

_ENV = collect(threads=2)

# The quick protocol for tests of plumbing (workers, journals, resume, shards, reports): one
# contest process of five rounds (a block times at least 2 iterations: 10 per case, as QUICK's
# min_iterations). Each process is a worker that imports torch, and the quick protocol's three
# per contest were most of a sweep test's time. tests/run/test_sweep.py's kill-and-resume test runs
# two processes per contest: the multi-process path, end to end.
PLUMBING = replace(
    QUICK, repeats=1, min_rounds=5, contest_seconds=0.0, warmup_seconds=0.01, settle_seconds=0.01
)


def case(
    target: str,
    median: float,
    *,
    model: str = "model-n3",
    layout: str = "kept",
    precision: str = "fp32",
    batch: int = 1,
    passed: bool = True,
    status: str = "ok",
    error: float = 1e-7,
) -> CaseResult:
    key = CaseKey(model, "d1g3st00", layout, target, precision, batch)
    if status != "ok":
        return CaseResult(key, status, f"{status} on purpose")
    atol = 1e-4
    max_abs = error if passed else 5e-2
    output = OutputAgreement("logits", max_abs, max_abs / 3, max_abs * 10, 1.0, 1.0, atol, 1e-4,
                             0.0 if passed else max_abs, 0, passed)  # fmt: skip
    samples = tuple(median * f for f in (0.97, 0.99, 1.0, 1.01, 1.2))
    return CaseResult(
        key, "ok", agreement=Agreement((output,)), latency=LatencyStats(samples, batch, "perf_counter")
    )


def run(*cases: CaseResult, run_id: str = "r") -> RunResult:
    result = new_run(run_id, _ENV, {"name": run_id})
    for c in cases:
        result = result.with_case(c)
    return result


def contest_cases(levels: dict[tuple[str, str], float], *, noise: float = 0.02, processes: int = 3,
                  rounds: int = 10, batch: int = 1, seed: int = 0, model: str = "model-n3",
                  process_spread: float = 0.0) -> list[CaseResult]:  # fmt: skip
    """Cases timed in one contest: ``levels`` maps (target, layout) to a median in ms. Every round
    shares a drift (which pairing cancels); each block has its own noise (CV ``noise``), and each
    process moves each member by its own factor (uniform in ±``process_spread``, what widens an
    interval; beyond ±0.07 a member's process could sit over 15 % above its fastest one, and be
    left out as disturbed). Noise only adds time: drift and block noise are never negative."""
    import numpy as np

    from ccnbench.measure.timing import Block

    rng = np.random.default_rng(seed)
    blocks: dict[tuple[str, str], list[Block]] = {k: [] for k in levels}
    for p in range(processes):
        offsets = {k: rng.uniform(-process_spread, process_spread) for k in levels}
        for r in range(rounds):
            drift = abs(rng.normal(0, 0.1))  # noise only adds time
            for k, level in levels.items():
                samples = level * np.exp(
                    drift + offsets[k] + abs(rng.normal(0, noise)) + abs(rng.normal(0, 0.01, 8))
                )
                blocks[k].append(Block(p, r, tuple(float(x) for x in samples)))
    out = []
    for (target, layout), bs in blocks.items():
        key = CaseKey(model, "d1g3st00", layout, target, "fp32", batch)
        plain = case(target, 1.0, model=model, layout=layout, batch=batch)
        latency = LatencyStats.from_blocks(bs, batch, "perf_counter")
        out.append(CaseResult(key, "ok", agreement=plain.agreement, latency=latency, contest="c1"))
    return out


def by_process(latency: LatencyStats, q: float) -> dict[int, float]:
    """Per contest process, the ``q``-th percentile of its samples, computed here from the blocks
    (not by ccnbench): what the views' ranges over processes are checked against."""
    import numpy as np

    samples: dict[int, list[float]] = {}
    for block in latency.blocks:
        samples.setdefault(block.process, []).extend(block.samples_ms)
    return {p: float(np.percentile(s, q)) for p, s in samples.items()}


def fastest_by_hand(latency: LatencyStats) -> float:
    """The fastest call computed here from the blocks: the geometric mean over the processes whose
    fastest call lies within 15 % of the fastest process's."""
    import math

    lows: dict[int, float] = {}
    for block in latency.blocks:
        lows[block.process] = min(lows.get(block.process, math.inf), *block.samples_ms)
    calm = [v for v in lows.values() if v <= 1.15 * min(lows.values())]
    return math.exp(sum(math.log(v) for v in calm) / len(calm))
