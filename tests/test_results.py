import json

import pytest

from ccnbench import results
from ccnbench.environment import collect
from ccnbench.errors import ResultsError
from ccnbench.measure.agreement import Agreement, OutputAgreement
from ccnbench.measure.memory import MemoryStats
from ccnbench.measure.timing import LatencyStats
from ccnbench.results import CaseKey, CaseResult


def _case(batch=1, status="ok", target="ort:cpu"):
    key = CaseKey("model-n3", "abcd1234", "merged", target, "fp32", batch)
    agreement = Agreement((OutputAgreement("logits", 1e-7, 1e-8, 1e-6, 1.0, 1.0, 1e-4, 1e-4, 0.0, 0, True),))
    return CaseResult(
        key,
        status,
        agreement=agreement if status == "ok" else None,
        latency=LatencyStats((1.0, 2.0, 3.0), batch, "perf_counter", 1000) if status == "ok" else None,
        memory=MemoryStats("cpu", peak_rss_delta_bytes=10),
        build_seconds=0.5,
        artifact={"file": "x.onnx", "size_bytes": 1},
        spec={"variant": "model"},
        details={"providers": ["CPUExecutionProvider"]},
    )


def test_run_round_trips_through_the_file(tmp_path):
    run = results.new_run("r1", collect(threads=2, timer_overhead_ns=150.0), {"name": "t"})
    run = run.with_case(_case(1)).with_case(_case(8)).with_case(_case(1, "timeout", "torch:cpu"))
    path = results.save(run, tmp_path)
    assert path == tmp_path / "results.json"
    again = results.load(tmp_path)
    assert again.to_dict() == run.to_dict()
    assert again.environment.timer_overhead_ns == 150.0
    assert [c.verdict for c in again.cases] == ["pass", "pass", "timeout"]
    # Replacing a case keeps one entry per key.
    assert len(again.with_case(_case(8)).cases) == 3


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"hello": "world"}', "not a ccnbench results file"),
        ('["a", "list"]', "not a ccnbench results file"),
        ('{"schema": "ccnbench.results", "schema_version": 999}', "schema version 999"),
        ('{"schema": "ccnbench.results", "schema_version": 1, "run_id": "x"}', "damaged"),
    ],
)
def test_corrupt_or_foreign_files_are_clear_errors(tmp_path, text, words):
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(ResultsError, match=words):
        results.load(tmp_path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ResultsError, match="no results at"):
        results.load(tmp_path / "nope")


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    run = results.new_run("r", collect(), {})
    for batch in range(1, 6):
        run = run.with_case(_case(batch))
        results.save(run, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["cases"]) == 5 and data["schema_version"] == results.SCHEMA_VERSION


def test_bad_status_is_rejected():
    with pytest.raises(ValueError):
        CaseResult(CaseKey("m", "d", "kept", "torch:cpu", "fp32", 1), "exploded")


def test_schema_1_files_load_without_intervals_and_contest_cases_round_trip(tmp_path):
    from ccnbench.answers import stats
    from ccnbench.measure.timing import Block

    run = results.new_run("r1", collect(threads=2), {"name": "t"}).with_case(_case(1))
    data = run.to_dict()
    data["schema_version"] = 1
    for c in data["cases"]:
        c.pop("contest")
    (tmp_path / "results.json").write_text(json.dumps(data))
    old = results.load(tmp_path)
    assert old.cases[0].contest is None and stats.median_interval(old.cases[0].latency) is None

    blocks = tuple(Block(p, r, (1.0 + r / 100, 1.1)) for p in range(2) for r in range(3))
    timed = CaseResult(
        _case(1).key, "ok", latency=LatencyStats.from_blocks(blocks, 1, "perf_counter"), contest="c"
    )
    again = CaseResult.from_dict(json.loads(json.dumps(timed.to_dict())))
    assert again.contest == "c" and again.latency.blocks == blocks
    assert again.latency.samples_ms == timed.latency.samples_ms
    assert timed.to_dict()["latency"]["samples_ms"] == []  # stored once, inside the blocks


def _started(tmp_path):
    run = results.new_run("r1", collect(threads=2), {"name": "t"})
    results.save(run, tmp_path)  # what `sweep.start` writes: the header, no cases yet
    return run


def test_journaled_cases_are_read_back_before_compaction(tmp_path):
    _started(tmp_path)
    results.append_case(tmp_path, _case(1))
    results.append_case(tmp_path, _case(8))
    assert (tmp_path / results.JOURNAL_FILE).is_file()
    # An interrupted run (never compacted) still loads with every finished case.
    loaded = results.load(tmp_path)
    assert [c.key.batch for c in loaded.cases] == [1, 8]
    results.save(loaded, tmp_path)
    assert not (tmp_path / results.JOURNAL_FILE).exists()
    assert [c.key.batch for c in results.load(tmp_path).cases] == [1, 8]


def test_a_half_written_last_line_is_dropped_and_a_rerun_case_replaces_the_old(tmp_path):
    _started(tmp_path)
    results.append_case(tmp_path, _case(1, "timeout"))
    results.append_case(tmp_path, _case(1))
    with (tmp_path / results.JOURNAL_FILE).open("a") as f:
        f.write('{"key": {"model": "cut off mid-wri')
    loaded = results.load(tmp_path)
    assert [(c.key.batch, c.status) for c in loaded.cases] == [(1, "ok")]


def test_a_damaged_line_inside_the_journal_is_an_error(tmp_path):
    _started(tmp_path)
    (tmp_path / results.JOURNAL_FILE).write_text("garbage\n" + json.dumps(_case(1).to_dict()) + "\n")
    with pytest.raises(ResultsError, match="line 1 is damaged"):
        results.load(tmp_path)


def test_a_crash_between_compaction_and_journal_removal_keeps_one_copy(tmp_path):
    run = _started(tmp_path).with_case(_case(1))
    results.append_case(tmp_path, _case(1))
    results.fileio.write_text(tmp_path / "results.json", json.dumps(run.to_dict()))  # journal left behind
    assert len(results.load(tmp_path).cases) == 1
