"""Hand-made results for the compare, recommend and report tests."""

from ccnbench.agreement import Agreement, OutputAgreement
from ccnbench.environment import collect
from ccnbench.results import CaseKey, CaseResult, RunResult, new_run
from ccnbench.timing import LatencyStats

_ENV = collect(threads=2)


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
