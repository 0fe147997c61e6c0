"""The CI regression gate end to end: a real 1.3× slow-down injected into one target is caught.

The slow-down is injected from outside the package: tests/fixtures/slowdown/sitecustomize.py on
PYTHONPATH makes every ONNX Runtime call spin for another 30 % of its own duration, in the
sweep's worker processes too (scripts/ci_gate.py puts it on the head runs' path with
CCNBENCH_GATE_HEAD_PATH). The gate is the one `.ci/run` uses: per case, 15 %, outside both runs' noise.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT

SWEEPS = ROOT / "ccnbench" / "sweeps"

INJECTOR = FIXTURES / "slowdown"  # a sitecustomize.py: ONNX Runtime 1.3x slower


def _ci_sweep(tmp_path: Path) -> Path:
    """The CI's own sweep file (protocol, threads, processes), on two of its five variants."""
    text = (SWEEPS / "ci-quick.toml").read_text()
    assert 'variants = "all"' in text
    path = tmp_path / "ci-two-variants.toml"
    path.write_text(text.replace('variants = "all"', 'variants = ["model", "decision"]'))
    return path


def _bench(sweep: Path, out: Path, artifacts: Path, env_path: str | None = None) -> None:
    import os

    env = dict(os.environ)
    if env_path:
        env["PYTHONPATH"] = env_path + os.pathsep + env.get("PYTHONPATH", "")
    args = ["bench", "--config", str(sweep), "--out", str(out), "--artifacts", str(artifacts), "--no-report"]
    subprocess.run([sys.executable, "-m", "ccnbench", *args], check=True, env=env, capture_output=True)


@pytest.mark.slow
def test_gate_fails_on_an_injected_slowdown_of_thirty_percent(tmp_path, artifacts_dir):
    sweep = _ci_sweep(tmp_path)
    _bench(sweep, tmp_path / "base", artifacts_dir)
    _bench(sweep, tmp_path / "slow", artifacts_dir, env_path=str(INJECTOR))
    gate = [sys.executable, "-m", "ccnbench", "compare", str(tmp_path / "base"), str(tmp_path / "slow"),
            "--threshold", "15%", "--json"]  # fmt: skip
    result = subprocess.run(gate, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout
    report = json.loads(result.stdout)
    failures = [c for c in report["changes"] if c["kind"] == "regression"]
    assert failures and {c["target"] for c in failures} == {"ort:cpu"}
    assert all(c["slowdown"] > 0.15 for c in failures)


# --- scripts/ci_gate.py: its decisions on recorded runs (no sweep is run) --------------------------

AMD = FIXTURES / "ci-quick-amd-epyc"


def _gate_module():
    import importlib.util

    path = ROOT / "scripts" / "ci_gate.py"
    spec = importlib.util.spec_from_file_location("ci_gate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slowed(run, factor=1.3):
    from dataclasses import replace

    from ccnbench.measure.timing import Block, LatencyStats

    cases = []
    for c in run.cases:
        if c.key.target == "ort:cpu":
            blocks = [
                Block(b.process, b.round, tuple(s * factor for s in b.samples_ms)) for b in c.latency.blocks
            ]
            c = replace(c, latency=LatencyStats.from_blocks(blocks, c.latency.batch, c.latency.clock))
        cases.append(c)
    return replace(run, cases=tuple(cases))


def _fake_gate(monkeypatch, tmp_path, runs, base_exists=True):
    """The gate with its sweeps replaced by recorded runs: ``runs[(side, number)]``."""
    gate = _gate_module()
    measured = []

    def bench(code, out, artifacts, extra_path=""):
        side, number = out.name.split("-")
        measured.append(out.name)
        return runs.get((side, int(number)))

    monkeypatch.setattr(gate, "bench", bench)
    monkeypatch.setattr(gate, "export_commit", lambda commit, into: "f" * 40 if base_exists else None)
    monkeypatch.setenv("CCNBENCH_GATE_OUT", str(tmp_path))
    return gate, measured


def test_gate_passes_an_unchanged_tree_with_one_pair(monkeypatch, tmp_path, capsys):
    from ccnbench import results

    a, b = results.load(AMD / "a.json"), results.load(AMD / "b.json")
    gate, measured = _fake_gate(monkeypatch, tmp_path, {("base", 1): a, ("head", 1): b})
    assert gate.main() == 0
    assert measured == ["base-1", "head-1"]
    out = capsys.readouterr().out
    assert "pass against base ffffffffffff measured here" in out and "speed judged" in out


def test_gate_fails_a_thirty_percent_slowdown_confirmed_by_a_second_pair(monkeypatch, tmp_path, capsys):
    from ccnbench import results

    a, b = results.load(AMD / "a.json"), results.load(AMD / "b.json")
    runs = {("base", 1): a, ("head", 1): _slowed(b), ("head", 2): _slowed(a), ("base", 2): b}
    gate, measured = _fake_gate(monkeypatch, tmp_path, runs)
    assert gate.main() == 1
    assert measured == ["base-1", "head-1", "head-2", "base-2"]  # ABBA: drift hits both sides
    out = capsys.readouterr().out
    assert "| regression |" in out and "(4+4 processes)" in out and "FAIL against base" in out


def test_gate_passes_a_regression_the_second_pair_does_not_reproduce(monkeypatch, tmp_path, capsys):
    from ccnbench import results

    a, b = results.load(AMD / "a.json"), results.load(AMD / "b.json")
    runs = {("base", 1): a, ("head", 1): _slowed(b), ("head", 2): a, ("base", 2): b}  # one disturbed head run
    gate, measured = _fake_gate(monkeypatch, tmp_path, runs)
    assert gate.main() == 0
    assert measured == ["base-1", "head-1", "head-2", "base-2"]
    assert "| regression |" not in capsys.readouterr().out


def test_a_regression_stands_only_if_every_pair_found_it():
    from ccnbench import results

    gate = _gate_module()
    a, b = results.load(AMD / "a.json"), results.load(AMD / "b.json")
    slow = gate.judge(a, _slowed(b), 0.15, force_speed=True)
    assert slow.failed
    assert gate.confirmed(slow, [slow, slow]).failed
    kept = gate.confirmed(slow, [slow, gate.judge(b, a, 0.15, force_speed=True)])
    regressions = {c.key for c in slow.changes if c.kind == "regression"}
    demoted = [c for c in kept.changes if c.key in regressions]
    assert not kept.failed and all("not reproduced by every pair" in c.detail for c in demoted)


def test_gate_pools_runs_into_one_contest_with_their_processes_renumbered():
    from ccnbench import results

    gate = _gate_module()
    a, b = results.load(AMD / "a.json"), results.load(AMD / "b.json")
    pooled = gate.pool([a, b])
    assert len(pooled.cases) == len(a.cases)
    assert {c.latency.processes for c in pooled.cases} == {4}


def test_gate_without_a_measurable_base_uses_a_foreign_baseline_for_agreement_only(
    monkeypatch, tmp_path, capsys
):
    from ccnbench import results

    a = results.load(AMD / "a.json")  # the Xeon baseline is foreign to it
    gate, measured = _fake_gate(monkeypatch, tmp_path, {("head", 1): _slowed(a)}, base_exists=False)
    assert gate.main() == 0
    assert measured == ["head-1"]
    out = capsys.readouterr().out
    assert (
        "another machine: speed not judged" in out and "speed NOT judged" in out and "| not judged |" in out
    )


def test_gate_fails_when_the_head_sweep_does_not_complete(monkeypatch, tmp_path):
    from ccnbench import results

    gate, _ = _fake_gate(monkeypatch, tmp_path, {("base", 1): results.load(AMD / "a.json")})
    assert gate.main() == 1


def test_gate_without_a_measurable_base_judges_speed_against_this_machines_baseline(
    monkeypatch, tmp_path, capsys
):
    from dataclasses import replace

    from ccnbench import environment, results

    here = environment.collect(threads=1)
    base = replace(results.load(AMD / "a.json"), environment=here)
    head = replace(_slowed(results.load(AMD / "b.json")), environment=here)
    results.save(base, tmp_path / "baselines" / "this-machine")
    foreign = results.load(AMD / "b.json")  # an unknown machine: never chosen for speed
    results.save(foreign, tmp_path / "baselines" / "a-foreign-one")
    gate, _ = _fake_gate(monkeypatch, tmp_path / "runs", {("head", 1): head}, base_exists=False)
    monkeypatch.setattr(gate, "BASELINES", tmp_path / "baselines")
    monkeypatch.setattr(gate, "ROOT", tmp_path)
    assert gate.main() == 1
    out = capsys.readouterr().out
    assert "baselines/this-machine (this machine and software)" in out and "| regression |" in out


def test_a_target_wide_slowdown_stands_though_no_pair_resolves_a_case_alone():
    from ccnbench.answers.compare import Change, Comparison

    gate = _gate_module()

    def comparison(kind, cases, slowdown=0.3):
        changes = tuple(Change(f"case{i}", kind, "ort:cpu", slowdown=slowdown) for i in range(cases))
        return Comparison("fastest", 0.15, True, "case", changes)

    slower = comparison("unchanged", 3)  # beyond the threshold in each pair, within its noise
    assert gate.confirmed(comparison("regression", 3), [slower, slower]).failed
    two = comparison("unchanged", 2)
    assert not gate.confirmed(comparison("regression", 2), [two, two]).failed  # not target-wide
    faster = comparison("unchanged", 3, slowdown=0.05)
    assert not gate.confirmed(comparison("regression", 3), [slower, faster]).failed  # one pair disagrees


def test_a_target_wide_slowdown_within_the_noise_calls_for_a_second_pair():
    from ccnbench.answers.compare import Change, Comparison

    gate = _gate_module()

    def first(*changes):
        return Comparison("fastest", 0.15, True, "case", tuple(changes))

    def change(i, kind="unchanged", target="ort:cpu", slowdown=0.3):
        return Change(f"case{i}", kind, target, slowdown=slowdown)

    assert gate.needs_second_pair(first(change(0, "regression")))  # a regression, as before
    # three cases of one target 30 % slower, none resolved: a busy host's first pair
    assert gate.needs_second_pair(first(*(change(i) for i in range(3))))
    # two are not target-wide, nor are three spread over targets or within the threshold
    assert not gate.needs_second_pair(first(change(0), change(1)))
    mixed = (change(0), change(1, target="openvino:cpu"), change(2, target="torch:cpu"))
    assert not gate.needs_second_pair(first(*mixed))
    assert not gate.needs_second_pair(first(*(change(i, slowdown=0.1) for i in range(3))))
