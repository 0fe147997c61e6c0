"""The GPU check's plan and its deadline, checked on the CPU.

The stages (scripts/gpu_check.sh + ccnbench/sweeps/gpu-*.toml) must answer the cheapest
questions first and keep formats that are compared with each other in one stage; the shared
deadline must include the exports and stop the group in flight, leaving a reportable run.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ccnbench import results, sweep
from ccnbench.errors import UsageError
from ccnbench.timing import Protocol

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _stages() -> list[str]:
    match = re.search(r"^STAGES=\(([^)]*)\)", SCRIPT.read_text(), re.M)
    assert match, "scripts/gpu_check.sh defines no STAGES"
    return match.group(1).split()


def test_stages_run_cheapest_questions_first():
    stages = [sweep.load_config(name).expand() for name in _stages()]
    eager, graphs, rest = stages
    every_model = {(g.source.label, g.source.layout) for stage in stages for g in stage}
    # 1: every model, kept and merged, on the two targets that need no compilation.
    assert {str(g.target) for g in eager} == {"torch:cuda", "ort:cuda"}
    assert {(g.source.label, g.source.layout) for g in eager} == every_model
    assert [g.source.spec.branches for g in eager[:8]] == [2] * 8  # the N-sweep leads
    # 2: CUDA graphs for the model-fusion N = 2, 4, 8 sweep only, kept and merged.
    assert {str(g.target) for g in graphs} == {"compile-graphs:cuda"}
    assert {(g.source.spec.variant, g.source.spec.branches, g.source.layout) for g in graphs} == {
        ("model", n, layout) for n in (2, 4, 8) for layout in ("kept", "merged")
    }
    # 3: the rest; compilation never touches a model that answers no question.
    assert all(g.source.spec.variant == "model" for g in rest)
    compiled = [g for stage in stages for g in stage if g.target.backend.startswith("compile")]
    assert {g.source.spec.variant for g in compiled} == {"model"}


def test_formats_compared_with_each_other_share_a_stage():
    for name in _stages():
        groups = sweep.load_config(name).expand()
        per_model: dict[tuple[str, str, str], set[str]] = {}
        for g in groups:
            per_model.setdefault((g.source.label, str(g.target), g.precision), set()).add(g.source.layout)
        assert all(layouts == {"kept", "merged"} for layouts in per_model.values()), name
    eager = sweep.load_config("gpu-1-eager").expand()
    pairs: dict[tuple[str, str, str], set[str]] = {}
    for g in eager:
        pairs.setdefault((g.source.label, g.source.layout, g.precision), set()).add(str(g.target))
    assert all(targets == {"torch:cuda", "ort:cuda"} for targets in pairs.values())


def test_script_header_states_the_case_counts():
    header = SCRIPT.read_text().split("set -uo pipefail")[0]
    counts = {name: sum(len(g.batches) for g in sweep.load_config(name).expand()) for name in _stages()}
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
    config = sweep.SweepConfig(
        models=({"preset": "tiny", "variants": ["early"], "layouts": ["kept"]},),
        targets=("ort:cpu",),
        artifacts=str(tmp_path / "artifacts"),
    )
    groups = config.expand()
    notes: list[str] = []
    sweep._export_artifacts(groups, sweep.SweepEvents(on_note=notes.append), deadline=time.monotonic() - 1)
    assert notes == [] and not (tmp_path / "artifacts").exists()


@pytest.mark.slow
def test_the_deadline_stops_the_group_in_flight_and_leaves_a_reportable_run(tmp_path, monkeypatch):
    from ccnbench.report import write_report

    # One group whose timing would take 120 s; the deadline, 20 s away, must end it.
    config = sweep.SweepConfig(
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
