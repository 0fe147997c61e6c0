"""Dashboard files: the shapes github-action-benchmark and Bencher document, and what they carry (a
case's time over eager PyTorch's, per machine), checked against a recorded run."""

import json
import math
import shutil
from dataclasses import replace

import pytest

from ccnbench import results
from ccnbench.answers import dashboard
from ccnbench.answers.derived import index, speedup_interval
from ccnbench.errors import ResultsError, UsageError
from ccnbench.results import CaseKey

from helpers import FIXTURES, PAIR_CASE, case, contest_cases, run

RUN = FIXTURES / "ci-quick-amd-epyc-2026-12-06" / "a.json"
MACHINE = "AMD EPYC 47621928713e"  # the fixture's CPU and machine_id

# The documented examples, as the formats' documentation gives them.
# github-action-benchmark README, "customBiggerIsBetter and customSmallerIsBetter":
GITHUB_EXAMPLE = [
    {"name": "My Custom Smaller Is Better Benchmark - CPU Load", "unit": "Percent", "value": 50},
    {
        "name": "My Custom Smaller Is Better Benchmark - Memory Used",
        "unit": "Megabytes",
        "value": 100,
        "range": "3",
        "extra": "Value for Tooltip: 25\nOptional Num #2: 100\nAnything Else!",
    },
]
# https://bencher.dev/docs/reference/bencher-metric-format/ ("Example Bencher Metric Format (BMF) JSON"):
BENCHER_EXAMPLE = {
    "benchmark_name": {
        "latency": {"value": 88.0, "lower_value": 87.42, "upper_value": 88.88},
        "throughput": {"value": 5.55, "lower_value": 3.14, "upper_value": 6.30},
    },
    "/bin/sh -c ./my_build_script.sh": {"build-time": {"value": 87.0}},
    "my_binary": {"file-size": {"value": 42.0}},
}


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def assert_github_shape(data):
    """github-action-benchmark's BenchmarkResult (src/extract.ts): an array of objects with name,
    unit and a numeric value, optional range and extra strings, and nothing else."""
    assert isinstance(data, list) and data
    for row in data:
        assert {"name", "unit", "value"} <= set(row) <= {"name", "unit", "value", "range", "extra"}
        assert isinstance(row["name"], str) and isinstance(row["unit"], str)
        assert _number(row["value"])
        for optional in ("range", "extra"):
            assert isinstance(row.get(optional, ""), str)


def assert_bencher_shape(data):
    """BMF's schema: benchmark -> measure -> {value, lower_value?, upper_value?}, all numbers;
    measure slugs up to 64 characters and benchmark names up to 1024."""
    assert isinstance(data, dict) and data
    for benchmark, measures in data.items():
        assert isinstance(benchmark, str) and 0 < len(benchmark) <= 1024
        assert isinstance(measures, dict) and measures
        for measure, metric in measures.items():
            assert isinstance(measure, str) and 0 < len(measure) <= 64
            assert "value" in metric and set(metric) <= {"value", "lower_value", "upper_value"}
            assert all(_number(v) for v in metric.values())
            if "lower_value" in metric:
                assert metric["lower_value"] <= metric["value"] <= metric["upper_value"]


def test_the_shape_checks_accept_the_documented_examples():
    assert_github_shape(GITHUB_EXAMPLE)
    assert_bencher_shape(BENCHER_EXAMPLE)


@pytest.fixture(scope="module")
def recorded():
    return results.load(RUN)


@pytest.fixture(scope="module")
def export(recorded):
    return dashboard.entries(recorded)


def test_both_files_have_the_documented_shape(export):
    gab = json.loads(json.dumps(dashboard.render(dashboard.GITHUB_ACTION_BENCHMARK, export)))
    bmf = json.loads(json.dumps(dashboard.render(dashboard.BENCHER, export)))
    assert_github_shape(gab)
    assert_bencher_shape(bmf)
    assert len(gab) == len(bmf) == len(export.entries) == 20  # 40 cases, 20 of them eager PyTorch's
    assert {row["unit"] for row in gab} == {"× eager PyTorch time"}


def test_a_case_exports_its_time_over_eager_pytorch_with_the_inverted_interval(recorded, export):
    case = next(c for c in recorded.cases if str(c.key) == PAIR_CASE)
    speedup = speedup_interval(index(recorded.cases), case)
    assert speedup.processes == 2 and speedup.computable  # both processes calm: a paired interval
    # The same figure from the raw blocks: the geometric mean over processes of this case's
    # fastest call over eager PyTorch's, in the same process.
    reference = next(c for c in recorded.cases if c.key == replace(case.key, target="torch:cpu"))
    lows = [
        {p: min(min(b.samples_ms) for b in c.latency.blocks if b.process == p) for p in (0, 1)}
        for c in (case, reference)
    ]
    by_hand = math.exp(sum(math.log(lows[0][p] / lows[1][p]) for p in (0, 1)) / 2)
    assert 1 / speedup.value == pytest.approx(by_hand, rel=1e-9)

    name = f"{PAIR_CASE} @ {MACHINE}"
    row = next(r for r in dashboard.github_action_benchmark(export) if r["name"] == name)
    assert row["value"] == pytest.approx(1 / speedup.value) == pytest.approx(0.275, abs=5e-4)
    assert row["value"] < 1  # ONNX Runtime takes about a quarter of eager PyTorch's time here
    assert row["unit"] == "× eager PyTorch time"  # a ratio: not ms, not ns
    assert row["range"] == f"95% interval [{1 / speedup.high:.3f}, {1 / speedup.low:.3f}]"
    assert "0.193 [0.184, 0.203] ms" in row["extra"]  # the fastest call, in ms
    assert "paired over 2 processes" in row["extra"] and MACHINE in row["extra"]

    metric = dashboard.bencher(export)[name]
    ratio = metric["time-vs-eager"]
    assert ratio["value"] == pytest.approx(1 / speedup.value)
    assert ratio["lower_value"] == pytest.approx(1 / speedup.high)
    assert ratio["upper_value"] == pytest.approx(1 / speedup.low)
    # Bencher's built-in latency is in nanoseconds: 0.193 ms is 193,000 ns.
    assert metric["latency"]["value"] == pytest.approx(case.latency.fastest * 1e6)
    assert metric["latency"]["value"] == pytest.approx(193_449, rel=1e-4)


def test_eager_pytorch_itself_is_not_exported(recorded, export):
    names = {e.name for e in export.entries}
    for c in recorded.cases:
        exported = f"{c.key} @ {MACHINE}" in names
        assert exported == (c.key.target != "torch:cpu"), c.key
    assert export.left_out == ()


def test_two_machines_give_two_names_for_one_case(recorded):
    other = replace(recorded, environment=replace(recorded.environment, machine_id="0123456789ab"))
    first, second = (
        next(e.name for e in dashboard.entries(r).entries if str(e.key) == PAIR_CASE)
        for r in (recorded, other)
    )
    assert first != second
    assert first.startswith(PAIR_CASE) and second.startswith(PAIR_CASE)
    assert second.endswith("AMD EPYC 0123456789ab")


def test_a_cuda_case_is_named_by_its_gpu_and_a_cpu_case_by_its_cpu(recorded):
    from ccnbench.environment import GpuInfo

    env = replace(recorded.environment, cpu="Intel(R) Xeon(R) CPU @ 2.20GHz", gpus=[GpuInfo("NVIDIA H200")])
    cuda = CaseKey("m", "d", "kept", "tensorrt:cuda", "fp16", 1)
    cpu = replace(cuda, target="ort:cpu")
    assert dashboard.machine_label(env, cuda) == "NVIDIA H200 47621928713e"
    assert dashboard.machine_label(env, cpu) == "Intel Xeon 47621928713e"


def test_an_unpaired_case_exports_its_value_without_bounds():
    torch, ort = (
        case("torch:cpu", 2.0),
        case("ort:cpu", 1.0),  # hand-made cases share no contest: unpaired
    )
    export = dashboard.entries(run(torch, ort))
    (entry,) = export.entries
    assert entry.ratio.value == pytest.approx(ort.latency.fastest / torch.latency.fastest)
    (row,) = dashboard.github_action_benchmark(export)
    assert "range" not in row and "unpaired" in row["extra"]
    metric = dashboard.bencher(export)[entry.name]["time-vs-eager"]
    assert set(metric) == {"value"}
    assert_github_shape([row])


def test_a_case_whose_outputs_disagree_is_left_out_and_counted():
    cases = contest_cases(
        {("torch:cpu", "kept"): 2.0, ("ort:cpu", "kept"): 1.0, ("openvino:cpu", "kept"): 1.5}
    )
    wrong = case("openvino:cpu", 1.5, passed=False)
    cases = [replace(c, agreement=wrong.agreement) if c.key.target == "openvino:cpu" else c for c in cases]
    failed = case("compile:cpu", 1.0, status="failed")
    export = dashboard.entries(run(*cases, failed))
    assert [e.key.target for e in export.entries] == ["ort:cpu"]
    assert export.entries[0].ratio.value == pytest.approx(0.5, rel=0.1)
    assert export.left_out_text() == (
        "left out 2 cases: 1 whose outputs disagree with the oracle, 1 not timed (failed, timed out or unavailable)"
    )


def test_a_run_without_a_machine_fingerprint_is_refused():
    old = results.load(FIXTURES / "ci-quick-amd-epyc" / "a.json")  # recorded before machine_id
    with pytest.raises(ResultsError, match="before machine fingerprints"):
        dashboard.entries(old)


def test_several_runs_are_refused_and_one_is_written_beside_it(tmp_path):
    with pytest.raises(UsageError, match="holds one run"):
        dashboard.write_dashboard([RUN.parent], dashboard.BENCHER)
    shutil.copy(RUN, tmp_path / "results.json")
    written = dashboard.write_dashboard([tmp_path], dashboard.BENCHER)
    assert written.path == tmp_path / "bencher.json"
    assert_bencher_shape(json.loads(written.path.read_text(encoding="utf-8")))
    with pytest.raises(UsageError, match="choose from github-action-benchmark, bencher"):
        dashboard.write_dashboard([tmp_path], "csv")


def test_shards_measured_on_two_machines_are_refused(tmp_path, recorded):
    """The combined run keeps its first part's environment: the second part's benchmarks would be
    named by the wrong machine."""
    from ccnbench import environment

    models = sorted({c.key.model for c in recorded.cases})
    for k, chosen in ((1, models[:2]), (2, models[2:])):
        env = recorded.environment
        if k == 2:
            env = replace(env, cpu="Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", cpu_vendor="GenuineIntel")
            env = replace(env, machine_id=environment.machine_id(env))
        part = replace(
            recorded,
            run_id=f"s-{k}",
            environment=env,
            config={**recorded.config, "shard": f"{k}/2"},
            cases=tuple(c for c in recorded.cases if c.key.model in chosen),
        )
        results.save(part, tmp_path / str(k))
    with pytest.raises(UsageError, match="shards were measured on different machines"):
        dashboard.write_dashboard([tmp_path], dashboard.BENCHER)
