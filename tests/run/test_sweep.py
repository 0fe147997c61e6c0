"""Sweeps: isolation of crashes and hangs, atomic saving, resume, and the bench command."""

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from ccnbench import results
from ccnbench.cli import app
from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.roofline.case_roofs import case_reading
from ccnbench.run import plan, sweep
from ccnbench.run.config import SweepConfig, load_config

from helpers import FIXTURES

USER_MODELS = FIXTURES / "user_models.py"
runner = CliRunner()


def _config(artifacts, **extra):
    data = {"name": "t", "preset": "tiny", "variants": "early", "layouts": "kept", "targets": "torch:cpu",
            "batches": [1, 2], "quick": True, "timeout": 60, "artifacts": str(artifacts)}  # fmt: skip
    data.update(extra)
    return SweepConfig.from_dict(data)


@pytest.mark.slow  # 19 s: real worker processes crash, hang into their timeout and raise
@pytest.mark.usefixtures("quick_is_one_process")
def test_crash_hang_and_raise_become_statuses_and_the_sweep_goes_on(tmp_path, artifacts_dir):
    models = [
        {"model": f"{USER_MODELS}:{name}", "input_shape": "1x8x8x8"}
        for name in ("crashes", "hangs", "raises")
    ]
    models.append({"variants": "early"})
    config = _config(artifacts_dir, models=models, timeout=10)
    run = sweep.execute(sweep.start(config, tmp_path / "run"), config, tmp_path / "run")
    by_model = {}
    for case in run.cases:
        by_model.setdefault(case.key.model, []).append(case)
    crash = by_model["user:user_models.py:crashes"]
    assert [c.status for c in crash] == ["failed", "failed"]
    assert "worker exited with code 3" in crash[0].message
    hang = by_model["user:user_models.py:hangs"]
    assert [c.status for c in hang] == ["timeout", "timeout"]
    assert "10 s timeout" in hang[0].message
    raised = by_model["user:user_models.py:raises"]
    assert [c.status for c in raised] == ["failed", "failed"]
    assert "RuntimeError: the user's factory is broken" in raised[0].message
    healthy = by_model["early-n3@tiny"]
    assert [c.passed for c in healthy] == [True, True] and all(c.latency for c in healthy)
    assert run.complete
    saved = results.load(tmp_path / "run")
    assert len(saved.cases) == 8 and saved.complete
    assert (tmp_path / "run" / "logs").is_dir()


@pytest.mark.slow  # 12 s of `make test` on 2 cores; the crash test above covers the plain path there
@pytest.mark.usefixtures("quick_is_one_process")
def test_one_worker_per_model_still_isolates_a_crashing_group(tmp_path, artifacts_dir):
    # The crashing factory and a healthy target share a worker; the crash ends only its own group.
    models = [{"model": f"{USER_MODELS}:crashes", "input_shape": "1x8x8x8"}, {"variants": "early"}]
    config = _config(artifacts_dir, models=models, targets="torch:cpu,ort:cpu", isolation="model")
    run = sweep.execute(sweep.start(config, tmp_path / "run"), config, tmp_path / "run")
    statuses = {(c.key.model.split(":")[-1], c.key.target): c.status for c in run.cases}
    assert statuses[("crashes", "torch:cpu")] == "failed" and statuses[("crashes", "ort:cpu")] == "failed"
    assert statuses[("early-n3@tiny", "torch:cpu")] == "ok" and statuses[("early-n3@tiny", "ort:cpu")] == "ok"


def test_an_existing_run_is_never_overwritten(tmp_path, artifacts_dir):
    config = _config(artifacts_dir)
    sweep.start(config, tmp_path / "run")
    with pytest.raises(CcnbenchError, match="already holds a run"):
        sweep.start(config, tmp_path / "run")


@pytest.mark.usefixtures("quick_is_one_process")
def test_budget_leaves_a_resumable_incomplete_run(tmp_path, artifacts_dir):
    config = _config(artifacts_dir, variants="early,feature")
    run_dir = tmp_path / "run"
    run = sweep.execute(sweep.start(config, run_dir), config, run_dir, budget_seconds=1e-9)
    assert not run.complete and len(run.cases) < 4
    again, stored = sweep.resume(run_dir)
    finished = sweep.execute(again, stored, run_dir)
    assert finished.complete and len(finished.cases) == 4


@pytest.mark.slow  # 20 s: a real sweep is killed mid-run and resumed
def test_killing_a_sweep_keeps_finished_cases_and_resume_completes_it(tmp_path, artifacts_dir):
    # The multi-process contest path end to end: two real processes per contest, of short rounds.
    sweep_file = tmp_path / "two-processes.toml"
    sweep_file.write_text('name = "kill"\npreset = "tiny"\nvariants = ["early", "model"]\nlayouts = "all"\n'
                          'targets = ["torch:cpu"]\nbatches = [1, 2]\nquick = true\n[protocol]\nrepeats = 2\n'
                          'min_rounds = 2\ncontest_seconds = 0.0\nsettle_seconds = 0.01\n')  # fmt: skip
    run_dir = tmp_path / "run"
    args = ["bench", "--config", str(sweep_file), "--out", str(run_dir), "--artifacts", str(artifacts_dir),
            "--no-report"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "ccnbench", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    journal = run_dir / results.JOURNAL_FILE  # finished cases land here until the run compacts it
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if journal.exists() and 2 <= len(journal.read_text().splitlines()) < 8:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker, with no chance to clean up
    proc.wait()
    partial = results.load(run_dir)
    assert 2 <= len(partial.cases) < 8 and not partial.complete
    before = {c.key: {(b.process, b.round, b.samples_ms) for b in c.latency.blocks} for c in partial.cases}

    result = runner.invoke(app, ["bench", "--resume", str(run_dir), "--no-report"])
    assert result.exit_code == 0, result.output
    full = results.load(run_dir)
    assert full.complete and len(full.cases) == 8
    assert not journal.exists()  # compacted into results.json
    for case in full.cases:  # a contest cut between its processes gets the missing ones
        assert case.latency.processes >= 2  # the protocol's repeats
        if case.key in before:  # what was measured was kept, not redone
            assert before[case.key] <= {(b.process, b.round, b.samples_ms) for b in case.latency.blocks}


@pytest.mark.usefixtures("quick_is_one_process")
def test_bench_cli_writes_a_run_and_refuses_to_overwrite_it(tmp_path, artifacts_dir):
    run_dir = tmp_path / "run"
    args = ["bench", "--preset", "tiny", "--variant", "multitask", "--layout", "all", "--targets",
            "torch:cpu,ort:cpu,ort:cuda", "--batch", "1,3", "--quick", "--out", str(run_dir),
            "--artifacts", str(artifacts_dir), "--no-report"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = results.load(run_dir)
    assert len(run.cases) == 2 * 3 * 2 and run.complete
    ok = [c for c in run.cases if c.status == "ok"]
    assert len(ok) == 8 and all(c.passed and c.latency.iterations >= 10 for c in ok)
    assert all(c.memory.peak_rss_delta_bytes is not None and c.build_seconds is not None for c in ok)
    onnx_cases = [c for c in ok if c.key.target == "ort:cpu"]
    assert all(c.artifact["conv_count"] in (2, 6) and c.memory.artifact_bytes > 0 for c in onnx_cases)
    assert run.environment.timer_overhead_ns > 0 and run.environment.threads >= 1
    # Each timed case carries its FLOPs, least bytes and its runtime's roofs (ccnbench.roofline).
    for c in ok:
        stamp = c.details["roofline"]
        assert stamp["flops"] == c.latency.flops_per_sample * c.key.batch
        assert stamp["bytes"] > 0 and stamp["memory"]["rate"] > 0
        assert stamp["compute"]["family"] == {"torch:cpu": "torch", "ort:cpu": "onnxruntime"}[c.key.target]
        assert case_reading(c).of_roof > 0
    assert "merged vs kept" in result.output and "ort:cuda: unavailable" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already holds a run" in again.output


@pytest.mark.usefixtures("quick_is_one_process")
def test_bench_a_users_own_model(tmp_path, artifacts_dir):
    args = ["bench", "--model", f"{USER_MODELS}:two_view", "--input-shape", "1x10x10x10", "--branches", "2",
            "--targets", "torch:cpu,ort:cpu", "--batch", "1", "--quick", "--out", str(tmp_path / "run"),
            "--artifacts", str(artifacts_dir), "--no-report"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cases = results.load(tmp_path / "run").cases
    assert {c.key.target for c in cases} == {"torch:cpu", "ort:cpu"}
    # --layout defaults to all: the graph pass merges the two identical branches.
    assert {c.key.layout for c in cases} == {"kept", "merged"} and all(c.passed for c in cases)
    assert all(c.details["merge"]["merged"] for c in cases if c.key.layout == "merged")
    assert all(c.latency.flops_per_sample > 0 for c in cases)  # counted by PyTorch's FlopCounterMode
    # A user's factory never runs in the sweep's parent (it may crash or hang): no roofline stamp.
    assert not any("roofline" in c.details for c in cases)
    assert len({c.contest for c in cases}) == 1  # kept and merged timed side by side


@pytest.mark.usefixtures("quick_is_one_process")
def test_bench_a_users_onnx_file(tmp_path, artifacts_dir):
    from ccnbench.formats.onnx_export import export
    from ccnbench.models import spec_from_preset

    artifact = export(spec_from_preset("tiny", "decision", branches=2), "merged", out_dir=tmp_path)
    args = ["bench", "--onnx", str(artifact.path), "--targets", "ort:cpu,torch:cpu", "--batch", "2", "--quick",
            "--out", str(tmp_path / "run"), "--no-report"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cases = {c.key.target: c for c in results.load(tmp_path / "run").cases}
    # Timed, but with no reference given ONNX Runtime on the CPU *is* the reference: not a pass.
    assert cases["ort:cpu"].verdict == "reference" and cases["ort:cpu"].latency is not None
    assert "nothing independent was checked" in " ".join(result.output.split())
    assert cases["torch:cpu"].status == "unavailable"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"models": [{"variants": "model", "speed": 1}]}, "unknown key 'speed' in [[models]]"),
        ({"protocol": {"warmup": 3}}, "[protocol]"),
        ({"isolation": "none"}, "isolation must be one of"),
        ({"timeout": 0}, "timeout must be positive"),
    ],
)
def test_bad_sweep_files_are_usage_errors(data, words):
    with pytest.raises(UsageError, match=words.replace("[", r"\[").replace("]", r"\]")):
        SweepConfig.from_dict(data)


def test_bundled_sweeps_expand(tmp_path):
    cpu = plan.expand(load_config("cpu-default"))
    assert {str(g.target) for g in cpu} == {"torch:cpu", "ort:cpu", "openvino:cpu"}  # no inductor builds
    assert all(g.protocol.repeats >= 3 for g in cpu)  # processes have speed modes: an answer needs several
    baseline = plan.expand(load_config("cpu-baseline"))  # make bench's protocol, plus the .pt2 files
    assert {str(g.target) for g in baseline} == {"torch:cpu", "ort:cpu", "openvino:cpu", "aoti:cpu"}
    assert {(g.protocol, g.options.threads) for g in baseline} == {
        (g.protocol, g.options.threads) for g in cpu
    }
    assert {g.source.spec.variant for g in cpu} == {"early", "feature", "model", "decision", "multitask"}
    assert {g.source.layout for g in cpu} == {"kept", "merged"} and all(g.batches == (1, 8) for g in cpu)
    gpu = plan.expand(load_config("gpu-4-nsweep"))
    model_branches = {g.source.spec.branches for g in gpu if g.source.spec.variant == "model"}
    assert model_branches == {2, 4, 8}
    assert {g.precision for g in gpu} == {"fp32", "fp16"} and all(g.batches == (1, 32) for g in gpu)
    (tmp_path / "mine.toml").write_text('preset = "tiny"\nvariants = ["early"]\ntargets = ["ort:cpu"]\n')
    assert len(plan.expand(load_config(str(tmp_path / "mine.toml")))) == 2
    with pytest.raises(UsageError, match="no sweep file"):
        load_config("no-such-sweep")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--config", "ci-quick", "--targets", "ort:cpu"], "--targets cannot be combined with --config"),
        (["--resume", "results/baseline-ci", "--batch", "4"], "--batch cannot be combined with --resume"),
        (["--config", "no-such-sweep"], "no sweep file 'no-such-sweep'"),
        (["--resume", "/no/such/run"], "no results at /no/such/run/results.json"),
    ],
)
def test_bench_flag_conflicts_and_bad_runs_are_one_line(args, words):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code in (1, 2)
    assert result.output.strip().startswith("error: ") and words in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_resume_runs_the_missing_processes_of_a_contest_cut_between_them(
    tmp_path, artifacts_dir, monkeypatch
):
    """A contest whose second process was cut (a deadline, a kill) is not complete, and --resume
    runs that process only, keeping the first one's blocks. The worker is faked: no process starts."""
    from ccnbench.measure.timing import Block, LatencyStats
    from ccnbench.run import contest

    spawned = []

    def fake_spawn(payload, groups, timeout, log_path, writer, deadline, merged=None):
        chain, process = [contest.Contest.from_dict(c) for c in payload["contests"]], payload["process"]
        spawned.append(process)
        if process == 1 and spawned.count(1) == 1:
            return "deadline", None, None, set()  # the first try of process 1 is cut
        seen = set()
        for match, group in ((m, g) for m in chain for g in m.groups):
            for key in group.case_keys():
                blocks = [Block(process, r, (1.0 + process, 1.1 + process)) for r in range(4)]
                case = results.CaseResult(key, "ok", latency=LatencyStats.from_blocks(blocks, key.batch, "perf_counter"),
                                          contest=match.id)  # fmt: skip
                merged[key] = contest.merge_processes(merged.get(key), case)
                writer.record(merged[key])
                seen.add(key)
        return "exited", 0, None, seen

    monkeypatch.setattr(sweep, "_spawn", fake_spawn)
    config = _config(artifacts_dir, layouts=["kept", "merged"], protocol={"contest": True, "repeats": 2})
    run_dir = tmp_path / "run"
    cut = sweep.execute(sweep.start(config, run_dir), config, run_dir)
    assert spawned == [0, 1] and len(cut.cases) == 4
    assert {c.latency.processes for c in cut.cases} == {1}
    assert not cut.complete and not results.load(run_dir).complete  # fewer processes than repeats

    again, stored = sweep.resume(run_dir)
    finished = sweep.execute(again, stored, run_dir)
    assert spawned == [0, 1, 1]  # only the missing process ran (a fresh one, numbered after process 0)
    assert finished.complete and len(finished.cases) == 4
    for case in results.load(run_dir).cases:
        assert sorted({(b.process, b.round) for b in case.latency.blocks}) == [
            (p, r) for p in (0, 1) for r in range(4)
        ]
