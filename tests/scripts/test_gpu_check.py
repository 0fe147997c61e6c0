"""The GPU check's plan and its deadline, checked on the CPU.

The stages (scripts/gpu_check.sh + ccnbench/sweeps/gpu-*.toml) must answer the cheapest
questions first and keep formats that are compared with each other in one stage; the shared
deadline must include the exports and stop the group in flight, leaving a reportable run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccnbench import results
from ccnbench.errors import UsageError
from ccnbench.measure.timing import Protocol
from ccnbench.run import contest, plan, prebuild, sweep
from ccnbench.run.config import SweepConfig, load_config

from helpers import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _stages() -> list[str]:
    match = re.search(r'GPU_CHECK_STAGES:-([^"}]*)}', SCRIPT.read_text())
    assert match, "scripts/gpu_check.sh defines no default stages"
    return match.group(1).split()


def _plan_module():
    spec = importlib.util.spec_from_file_location("gpu_plan", ROOT / "scripts" / "gpu_plan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_plan"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _what(groups) -> set[tuple]:
    return {(g.source.spec.variant, g.source.spec.branches, g.source.layout, str(g.target), g.precision, g.batches)
            for g in groups}  # fmt: skip


def test_stages_answer_the_important_questions_first():
    stages = [plan.expand(load_config(name)) for name in _stages()]
    assert len(stages) == 5
    eager, graphs, aoti, nsweep, rest = stages
    five = ("model", "early", "feature", "decision", "multitask")
    both = ("kept", "merged")
    # (a) torch:cuda and ort:cuda, the five variants at N = 3, kept/merged, fp32/fp16, batch 1 and 32.
    assert _what(eager) == {
        (v, 3, layout, t, p, (1, 32)) for v in five for layout in both for t in ("torch:cuda", "ort:cuda")
        for p in ("fp32", "fp16")
    }  # fmt: skip
    # (b) CUDA graphs, fp16, batch 1, the five variants.
    assert _what(graphs) == {
        (v, 3, layout, "compile-graphs:cuda", "fp16", (1,)) for v in five for layout in both
    }
    # (c) AOTInductor on CUDA, fp16, model fusion.
    assert {(v, n, layout, t, p) for v, n, layout, t, p, _ in _what(aoti)} == {
        ("model", 3, layout, "aoti:cuda", "fp16") for layout in both
    }
    # (d) the N = 2, 4, 8 model-fusion sweep.
    assert {(v, n) for v, n, *_ in _what(nsweep)} == {("model", n) for n in (2, 4, 8)}
    # compile:cuda last.
    assert "compile:cuda" in {str(g.target) for g in rest}
    assert all("compile:cuda" not in {str(g.target) for g in stage} for stage in stages[:-1])


def test_formats_compared_with_each_other_share_a_stage():
    for name in _stages():
        groups = plan.expand(load_config(name))
        per_model: dict[tuple[str, str, str], set[str]] = {}
        for g in groups:
            per_model.setdefault((g.source.label, str(g.target), g.precision), set()).add(g.source.layout)
        assert all(layouts == {"kept", "merged"} for layouts in per_model.values()), name
    for name in ("gpu-1-eager", "gpu-4-nsweep"):
        pairs: dict[tuple[str, str, str], set[str]] = {}
        for g in plan.expand(load_config(name)):
            pairs.setdefault((g.source.label, g.source.layout, g.precision), set()).add(str(g.target))
        assert all(targets == {"torch:cuda", "ort:cuda"} for targets in pairs.values())


def test_a_stage_pays_one_worker_start_and_a_model_shares_it_across_precisions():
    groups = plan.expand(load_config("gpu-1-eager"))
    contests, alone = contest.plan(groups)
    assert alone == [] and len(contests) == 10  # five models x two precisions
    assert len(sweep.contest_workers(contests, "device")) == 1
    per_model = sweep.contest_workers(contests, "model")
    assert len(per_model) == 5
    assert all({m.groups[0].precision for m in chain} == {"fp32", "fp16"} for chain in per_model)


def test_builds_run_in_parallel_processes_where_there_are_cores(monkeypatch):
    monkeypatch.setenv("CCNBENCH_EXPORT_JOBS", "8")
    assert prebuild.export_jobs(20) == 8 and prebuild.export_jobs(3) == 3 and prebuild.export_jobs(0) == 1
    monkeypatch.setenv("CCNBENCH_EXPORT_JOBS", "many")
    with pytest.raises(UsageError, match="CCNBENCH_EXPORT_JOBS"):
        prebuild.export_jobs(4)


def test_plan_prices_every_stage_from_the_h200_timings_and_marks_estimates(capsys):
    plan = _plan_module()
    eager = plan.estimate_stage("gpu-1-eager", with_ort=False)
    lines = {
        what.split(" x ")[-1].split(" (")[0] if "prepare" in what else what: (s, m)
        for what, s, m in eager.lines
    }
    assert lines["1 worker starts"] == (plan.H200["worker_start"], True)  # measured on the H200
    assert lines["torch:cuda"][1] is True
    with_ort = plan.estimate_stage("gpu-1-eager")
    ort = [line for line in with_ort.lines if "ort:cuda" in line[0]]
    assert ort and not ort[0][2]  # no H200 timing for ONNX Runtime CUDA: an estimate
    assert with_ort.seconds > eager.seconds
    aoti = plan.estimate_stage("gpu-3-aoti")
    assert any(".pt2 builds" in what and not measured for what, _, measured in aoti.lines)
    # The CPU oracle is priced from the H200's 3/11/20 s per model at N = 2/4/8.
    assert plan.oracle_seconds(8, on_gpu=False) == (20.0, True)
    assert plan.main(["--budget", "240", *_stages()]) == 0
    out = capsys.readouterr().out
    for name in _stages():
        assert re.search(rf"-- plan {name}: \d+ groups", out) and f"{name}" in out
    assert "cumulative" in out and " s *" in out and "dropped first" in out
    assert "past the deadline: cut" in out  # the plan says what the 5 minutes will not hold


@pytest.mark.slow
def test_parallel_builds_write_every_artifact_and_stop_at_the_deadline(tmp_path, monkeypatch):
    monkeypatch.setenv("CCNBENCH_EXPORT_JOBS", "2")
    config = SweepConfig(
        models=({"preset": "tiny", "variants": ["early"], "layouts": ["kept", "merged"]},),
        targets=("ort:cpu",),
        artifacts=str(tmp_path / "artifacts"),
    )
    notes: list[str] = []
    spent = time.monotonic() - 1
    prebuild.export_artifacts(plan.expand(config), notes.append, deadline=spent)
    assert "deadline: the builds still running are stopped" in notes
    prebuild.export_artifacts(plan.expand(config), notes.append)
    assert len(list((tmp_path / "artifacts").glob("early-*-n3-fp32-*.onnx"))) == 2
    assert notes[-3] == "building 2 artifacts in 2 processes"


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("nvidia-smi") is not None, reason="a GPU is here: the check would run for real"
)
def test_the_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    began = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT)], env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - began < 60  # a dry run, not a CPU benchmark
    assert "dry run" in done.stdout and "-- plan gpu-5-compile" in done.stdout
    assert [p.name for p in (tmp_path / "gpu-none").iterdir()] == ["console.log"]
    assert not Path("/tmp/ccnbench-gpu-check/gpu-1-eager").exists()


def test_script_header_states_the_case_counts():
    header = SCRIPT.read_text().split("set -uo pipefail")[0]
    counts = {name: sum(len(g.batches) for g in plan.expand(load_config(name))) for name in _stages()}
    for name, cases in counts.items():
        assert re.search(rf"{name}\b.*\n.*\b{cases} cases", header), f"header lacks {name}: {cases} cases"
    assert f"{sum(counts.values())} cases" in header


def test_deadline_comes_from_the_budget_or_the_environment(monkeypatch):
    monkeypatch.delenv("CCNBENCH_DEADLINE", raising=False)
    assert sweep._deadline(None) is None
    now = time.monotonic()
    assert now + 9 < sweep._deadline(10) <= time.monotonic() + 10
    monkeypatch.setenv("CCNBENCH_DEADLINE", str(time.time() + 5))
    assert sweep._deadline(None) <= time.monotonic() + 5
    assert sweep._deadline(100) <= time.monotonic() + 5  # the earlier of the two
    monkeypatch.setenv("CCNBENCH_DEADLINE", "soon")
    with pytest.raises(UsageError, match="CCNBENCH_DEADLINE must be a Unix time"):
        sweep._deadline(None)


def test_a_spent_deadline_skips_the_remaining_exports(monkeypatch, tmp_path):
    config = SweepConfig(
        models=({"preset": "tiny", "variants": ["early"], "layouts": ["kept"]},),
        targets=("ort:cpu",),
        artifacts=str(tmp_path / "artifacts"),
    )
    groups = plan.expand(config)
    notes: list[str] = []
    prebuild.export_artifacts(groups, notes.append, deadline=time.monotonic() - 1)
    assert notes == [] and not (tmp_path / "artifacts").exists()


@pytest.mark.slow
def test_the_deadline_stops_the_group_in_flight_and_leaves_a_reportable_run(tmp_path, monkeypatch):
    from ccnbench.answers.report import write_report

    # One group whose timing would take 120 s; the deadline, 20 s away, must end it.
    config = SweepConfig(
        models=({"preset": "tiny", "variants": ["early", "feature"], "layouts": ["kept"]},),
        targets=("torch:cpu",),
        batches=(1,),
        protocol=Protocol(
            warmup_iterations=1,
            warmup_seconds=0,
            min_iterations=10**9,
            min_seconds=120,
            max_iterations=10**9,
            max_seconds=120,
        ),
        artifacts=str(tmp_path / "artifacts"),
        threads=1,
    )
    monkeypatch.setenv("CCNBENCH_DEADLINE", str(time.time() + 20))
    run_dir = tmp_path / "run"
    began = time.monotonic()
    run = sweep.execute(sweep.start(config, run_dir), config, run_dir)
    assert time.monotonic() - began < 100  # well before the group's own 120 s of timing
    assert not run.complete and len(run.cases) < 2
    stored = results.load(run_dir)
    assert stored.complete is False
    assert write_report([run_dir], tmp_path / "report").is_file()


def test_the_oracle_runs_where_ccnbench_oracle_device_says(monkeypatch):
    import torch

    from ccnbench.source import oracle_device

    monkeypatch.delenv("CCNBENCH_ORACLE_DEVICE", raising=False)
    assert oracle_device() == "cpu"
    monkeypatch.setenv("CCNBENCH_ORACLE_DEVICE", "cuda")
    assert oracle_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("CCNBENCH_ORACLE_DEVICE", "tpu")
    with pytest.raises(UsageError, match="CCNBENCH_ORACLE_DEVICE must be cpu or cuda"):
        oracle_device()


def test_the_script_passes_the_projects_commit_on():
    text = SCRIPT.read_text()
    assert "git rev-parse --show-toplevel" in text and "git rev-parse HEAD" in text
    assert (
        "export CCNBENCH_GIT_COMMIT" in text
    )  # taken as given on the GPU machine, where .git does not travel
