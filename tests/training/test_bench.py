"""The training-step benchmark's plumbing: members, one contest, and ratios from blocks."""

import json
from dataclasses import asdict, replace

import pytest
import torch
import typer
from typer.testing import CliRunner

from ccnbench.backends.base import Target
from ccnbench.cli import _OneLineErrors
from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.measure.timing import Block, Protocol
from ccnbench.models import spec_from_preset
from ccnbench.training import bench
from ccnbench.training.bench import PROTOCOL, BenchConfig, members_of, run_contest, summarize
from ccnbench.training.commands import register

TINY = BenchConfig(preset="tiny", batches=(2,), targets=("torch:cpu",), processes=1,
                   protocol=replace(PROTOCOL, min_rounds=3, block_seconds=0.005, contest_seconds=0.0,
                                    settle_seconds=0.0))  # fmt: skip


def test_every_merged_member_is_paired_with_a_kept_member_of_the_same_loss():
    for variant in ("early", "feature", "model", "decision", "multitask"):
        members = {m.name: m for m in members_of(variant)}
        for m in members.values():
            if m.partner:
                assert members[m.partner].form == "kept"
                assert members[m.partner].loss_mode == m.loss_mode
    assert {m.name for m in members_of("decision")} >= {"kept-members", "unfolded-members"}


def test_one_contest_times_every_member_in_interleaved_rounds():
    spec = spec_from_preset("tiny", "decision", branches=2)
    record = run_contest(spec, Target.parse("torch:cpu"), TINY, process=0)[2]
    assert set(record["blocks"]) == {m.name for m in members_of("decision")}
    rounds = {name: [b["round"] for b in blocks] for name, blocks in record["blocks"].items()}
    assert all(r == [0, 1, 2] for r in rounds.values())
    # every block fills its 5 ms (one call when a step alone fills it, else at least two)
    assert all(sum(b["samples_ms"]) >= 5.0 for blocks in record["blocks"].values() for b in blocks)


def test_a_contest_tells_its_rounds_how_long_each_members_warm_up_step_took(monkeypatch):
    seen, real = [], bench.interleave

    def spy(*args, known_ms, **kwargs):
        seen.append(list(known_ms))
        return real(*args, known_ms=known_ms, **kwargs)

    monkeypatch.setattr(bench, "interleave", spy)
    run_contest(spec_from_preset("tiny", "model", branches=2), Target.parse("torch:cpu"), TINY, process=0)
    # one interleave per batch size, told a step time for each member (kept, merged): the first
    # round then needs no discarded call where a step fills its block
    assert len(seen) == 1 and len(seen[0]) == 2 and all(ms > 0 for ms in seen[0])


def test_a_compiled_member_trained_with_a_loss_per_member_runs_its_compiled_graph(monkeypatch):
    """A per-member loss reaches the members' logits through the compiled module's forward: a
    compiled kept-members or unfolded-members step must not run eager."""
    real_compile, outputs = torch.compile, []

    def recording_backend(graph, example_inputs):
        def run(*args):
            result = graph.forward(*args)  # the traced graph as it is: no Inductor build in a unit test
            outputs.append([tuple(t.shape) for t in result])
            return result

        return run

    monkeypatch.setattr(torch, "compile", lambda m, **kw: real_compile(m, backend=recording_backend, **kw))
    spec = spec_from_preset("tiny", "decision", branches=2)
    for member in members_of("decision"):
        outputs.clear()
        runner = bench._build_member(
            member, spec, Target.parse("compile:cpu"), replace(TINY, targets=("compile:cpu",))
        )[2]
        runner.call()
        # the step ran a compiled graph, and it gave what the member's loss reads: each member's
        # logits (batch, members, classes) for a loss per member, the fused ones otherwise
        expected = (2, 2, spec.classes) if member.loss_mode == "members" else (2, spec.classes)
        assert [expected] in outputs, (member.name, outputs)


def test_a_compiled_decision_fusion_is_never_reached_into_for_its_members():
    """Without ``MemberLogits`` a compiled model's members could only be called eager: refused."""
    from ccnbench.models import build_kept
    from ccnbench.training.step import member_logits

    spec = spec_from_preset("tiny", "decision", branches=2)
    compiled = torch.compile(build_kept(spec), backend="eager")
    with pytest.raises(UsageError, match="wrapped in MemberLogits"):
        member_logits(compiled, bench.make_batch(spec, 2).inputs)


def test_a_worker_reports_each_contest_as_it_starts_and_ends_then_prints_its_records(capsys):
    config = replace(TINY, variants=("model", "decision"))
    assert bench._main([config.to_json(), "0"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    events = [(m["contest"], m["done"]) for m in lines[:-1]]
    assert events == [("model-n3@tiny on torch:cpu", False), ("model-n3@tiny on torch:cpu", True),
                      ("decision-n3@tiny on torch:cpu", False), ("decision-n3@tiny on torch:cpu", True)]  # fmt: skip
    records = lines[-1]
    assert [(r["variant"], r["batch"]) for r in records] == [("model", 2), ("decision", 2)]
    assert all("blocks" in r for r in records)


def test_a_worker_past_its_time_is_stopped_and_said_in_one_line():
    with pytest.raises(CcnbenchError, match="process 0 ran past 0 s"):
        bench._run_worker(TINY, 0, None, timeout_s=0.2)  # torch alone takes longer to import


def _record(process, kept_ms, merged_ms):
    def blocks(ms):
        return [asdict(Block(process, r, (ms * (1 + 0.01 * r), ms * (1 - 0.01 * r)))) for r in range(4)]

    return {"label": "model-n3@tiny", "variant": "model", "target": "torch:cpu", "batch": 8,
            "build_seconds": {"kept": 0.1, "merged": 0.2},
            "blocks": {"kept": blocks(kept_ms), "merged": blocks(merged_ms)}}  # fmt: skip


def test_summary_pairs_blocks_across_processes_into_a_ratio_with_an_interval():
    records = json.loads(json.dumps([_record(0, 10.0, 5.0), _record(1, 11.0, 5.6)]))
    results = {r.member: r for r in summarize(records)}
    ratio = results["merged"].ratio
    assert ratio.processes == 2 and ratio.low < ratio.value < ratio.high
    assert 0.5 < ratio.value < 0.53
    assert results["kept"].ratio is None and results["merged"].build_seconds == (0.2, 0.2)


def test_an_unknown_target_or_too_few_rounds_is_a_usage_error():
    with pytest.raises(UsageError, match="training target"):
        BenchConfig(targets=("ort:cpu",))
    with pytest.raises(UsageError, match=">= 3 rounds"):
        BenchConfig(protocol=replace(PROTOCOL, min_rounds=2))


def test_the_default_protocol_is_the_training_benchmarks_own():
    p = BenchConfig().protocol
    assert (p.min_rounds, p.block_seconds, p.contest_seconds, p.target_width, p.settle_seconds) == (
        3, 0.05, 1.0, 0.03, 0.2,
    )  # fmt: skip
    assert (p.warmup_iterations, p.warmup_seconds) == (1, 0.0)


def test_a_config_keeps_its_protocol_through_json():
    """The worker process receives its config as JSON: nothing of the protocol may be lost."""
    protocol = Protocol(warmup_iterations=7, warmup_seconds=0.3, block_seconds=0.02, settle_seconds=0.1,
                        min_rounds=4, contest_seconds=1.5, target_width=0.05, max_seconds=9.0)  # fmt: skip
    config = BenchConfig(preset="tiny", variants=("model",), batches=(2, 4), processes=2, protocol=protocol,
                         threads=1)  # fmt: skip
    again = BenchConfig.from_json(config.to_json())
    assert again == config and isinstance(again.protocol, Protocol) and again.protocol == protocol


def test_cli_rounds_and_contest_seconds_fill_the_protocol(monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "run", lambda config, on_contest=None: seen.append(config) or [])
    app = typer.Typer(cls=_OneLineErrors, pretty_exceptions_enable=False)
    register(app)
    args = ["train-bench", "-v", "model", "-p", "tiny", "-b", "2", "-t", "torch:cpu", "--processes", "2",
            "--rounds", "4", "--contest-seconds", "0.5"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.processes == 2
    assert config.protocol == replace(PROTOCOL, min_rounds=4, contest_seconds=0.5)
    result = CliRunner().invoke(app, args[:-4])  # without them: the protocol's own
    assert result.exit_code == 0, result.output
    assert seen[-1].protocol == PROTOCOL


def test_cli_out_writes_the_results_with_their_config_and_machine(monkeypatch, tmp_path):
    records = json.loads(json.dumps([_record(0, 10.0, 5.0), _record(1, 11.0, 5.6)]))
    monkeypatch.setattr(bench, "run", lambda config, on_contest=None: summarize(records))
    app = typer.Typer(cls=_OneLineErrors, pretty_exceptions_enable=False)
    register(app)
    out = tmp_path / "runs" / "train.json"  # its folder is made
    args = ["train-bench", "-v", "model", "-p", "tiny", "-b", "8", "-t", "torch:cpu", "--processes", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["schema"] == "ccnbench.train-bench" and document["config"]["processes"] == 2
    assert document["environment"]["machine_id"] and document["environment"]["torch"] == torch.__version__
    merged = next(r for r in document["results"] if r["member"] == "merged")
    assert merged["ratio"]["processes"] == 2 and 0.5 < merged["ratio"]["value"] < 0.53
    # a folder is refused before anything is measured, in one line
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("measured although --out was a folder"))
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert refused.exit_code == 2 and "is a directory" in refused.output


@pytest.mark.slow
def test_cli_runs_fresh_processes_and_reports_ratios():
    app = typer.Typer(cls=_OneLineErrors, pretty_exceptions_enable=False)
    register(app)
    args = ["train-bench", "-v", "model", "-p", "tiny", "-b", "2", "-t", "torch:cpu,compile:cpu",
            "--processes", "2", "--rounds", "3", "--contest-seconds", "0", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # progress lines go to stderr
    assert "process 2/2" in result.stderr and "training benchmark:" in result.stderr
    assert "of it building and warming compiled forms in process 1" in result.stderr  # Inductor's share
    merged = [r for r in rows if r["member"] == "merged"]
    assert {r["target"] for r in merged} == {"torch:cpu", "compile:cpu"}
    # both processes, or the one calm for both members (a process over 15 % slow is left out)
    assert all(r["ratio"]["processes"] in (1, 2) and r["ratio"]["low"] <= r["ratio"]["value"] for r in merged)
