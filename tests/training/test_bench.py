"""The training-step benchmark's plumbing: members, one contest, and ratios from blocks."""

import json
from dataclasses import asdict

import pytest
import typer
from typer.testing import CliRunner

from ccnbench.backends.base import Target
from ccnbench.cli import _OneLineErrors
from ccnbench.errors import UsageError
from ccnbench.models import spec_from_preset
from ccnbench.timing import Block
from ccnbench.training.bench import BenchConfig, members_of, run_contest, summarize
from ccnbench.training.commands import register

TINY = BenchConfig(preset="tiny", batches=(2,), targets=("torch:cpu",), processes=1, min_rounds=3,
                   block_seconds=0.005, contest_seconds=0.0, settle_seconds=0.0)  # fmt: skip


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
    assert all(len(b["samples_ms"]) >= 2 for blocks in record["blocks"].values() for b in blocks)


def _record(process, kept_ms, merged_ms):
    def blocks(ms):
        return [asdict(Block(process, r, (ms * (1 + 0.01 * r), ms * (1 - 0.01 * r)))) for r in range(4)]

    return {"label": "model-n3@tiny", "variant": "model", "target": "torch:cpu", "batch": 8,
            "build_seconds": {"kept": 0.1, "merged": 0.2},
            "blocks": {"kept": blocks(kept_ms), "merged": blocks(merged_ms)}}  # fmt: skip


def test_summary_pairs_blocks_across_processes_into_a_ratio_with_an_interval():
    records = json.loads(json.dumps([_record(0, 10.0, 5.0), _record(1, 12.0, 6.3)]))
    results = {r.member: r for r in summarize(records)}
    ratio = results["merged"].ratio
    assert ratio.processes == 2 and ratio.low < ratio.value < ratio.high
    assert 0.5 < ratio.value < 0.53
    assert results["kept"].ratio is None and results["merged"].build_seconds == (0.2, 0.2)


def test_an_unknown_target_is_a_usage_error():
    with pytest.raises(UsageError, match="training target"):
        BenchConfig(targets=("ort:cpu",))


@pytest.mark.slow
def test_cli_runs_fresh_processes_and_reports_ratios():
    app = typer.Typer(cls=_OneLineErrors, pretty_exceptions_enable=False)
    register(app)
    args = ["train-bench", "-v", "model", "-p", "tiny", "-b", "2", "-t", "torch:cpu,compile:cpu",
            "--processes", "2", "--rounds", "3", "--contest-seconds", "0", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # progress lines go to stderr
    merged = [r for r in rows if r["member"] == "merged"]
    assert {r["target"] for r in merged} == {"torch:cpu", "compile:cpu"}
    assert all(r["ratio"]["processes"] == 2 for r in merged)
