"""max_repeats: after ``repeats`` processes, only the contests whose answer is still inconclusive
get more processes, one at a time, up to ``max_repeats``. The worker is faked: no process starts."""

from types import SimpleNamespace

from ccnbench import cli, results
from ccnbench.answers.recommend import recommend
from ccnbench.measure.agreement import Agreement
from ccnbench.measure.timing import Block, LatencyStats
from ccnbench.run import contest, sweep
from ccnbench.run.config import SweepConfig

# Per model, kept's and merged's latency (ms) in each process. Early fusion: merged clearly
# about twice as slow in every process (never exactly: identical processes prove nothing, and
# make an interval not computable). Model fusion: merged 12 % slower in even processes and 10 %
# faster in odd ones (kept being the slower one there), so its interval contains parity and is far too wide for a tie.
# Feature fusion: as model fusion.
_MERGED_OVER_KEPT = {
    "early": lambda p: 2.0 + 0.01 * p,
    "model": lambda p: 1.12 if p % 2 == 0 else 0.90,
    "feature": lambda p: 1.12 if p % 2 == 0 else 0.90,
}
_SECONDS_PER_CONTEST = 10.0


def _fake_worker(spawned, checked=None, clock=None):
    def spawn(payload, groups, timeout, log_path, writer, deadline, merged=None):
        chain, process = [contest.Contest.from_dict(c) for c in payload["contests"]], payload["process"]
        if clock is not None:  # the sweep's clock: each contest takes _SECONDS_PER_CONTEST
            clock[0] += _SECONDS_PER_CONTEST * len(chain)
        if checked is not None:
            checked.append((process, len(payload["checked"]), len(chain)))
        spawned.append((process, sorted(m.groups[0].source.spec.variant for m in chain)))
        seen = set()
        for match, group in ((m, g) for m in chain for g in m.groups):
            ratio = _MERGED_OVER_KEPT[group.source.spec.variant](process)
            # The slower layout of the two is the one moved, so that neither layout's fastest call
            # sits over 15 % above its fastest process's (such a process is left out as disturbed).
            kept_ms = max(1.0, 1 / ratio)
            for key in group.case_keys():
                ms = ratio * kept_ms if key.layout == "merged" else kept_ms
                # Rounds vary a little, and differently for the two layouts: a real interval.
                jitter = [
                    1 + ((r * (3 if key.layout == "merged" else 7) + process) % 5) / 200 for r in range(6)
                ]
                blocks = [Block(process, r, (ms * j, ms * j * 1.01)) for r, j in enumerate(jitter)]
                latency = LatencyStats.from_blocks(blocks, key.batch, "perf_counter")
                case = results.CaseResult(
                    key, "ok", latency=latency, agreement=Agreement(()), contest=match.id
                )
                merged[key] = contest.merge_processes(merged.get(key), case)
                writer.record(merged[key])
                seen.add(key)
        return "exited", 0, None, seen

    return spawn


def _run(
    tmp_path, artifacts_dir, monkeypatch, checked=None, variants=("early", "model"), notes=None, **protocol
):
    spawned, clock = [], [0.0]
    monkeypatch.setattr(sweep, "_spawn", _fake_worker(spawned, checked, clock))
    monkeypatch.setattr(sweep, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    config = SweepConfig.from_dict(
        {"name": "t", "preset": "tiny", "variants": list(variants), "layouts": ["kept", "merged"],
         "targets": "ort:cpu", "batches": [1], "quick": True, "timeout": 60, "isolation": "device",
         "artifacts": str(artifacts_dir), "protocol": {"contest": True, **protocol}}
    )  # fmt: skip
    run_dir = tmp_path / "run"
    events = sweep.SweepEvents(on_note=(notes if notes is not None else []).append)
    return spawned, sweep.execute(sweep.start(config, run_dir), config, run_dir, events)


def test_only_the_inconclusive_contest_gets_more_processes(tmp_path, artifacts_dir, monkeypatch, capsys):
    checked = []
    spawned, run = _run(tmp_path, artifacts_dir, monkeypatch, checked, repeats=2, max_repeats=5)
    # The first process grades agreement and memory; every later one is told to time only.
    assert checked == [(0, 0, 2), (1, 2, 2), (2, 1, 1), (3, 1, 1), (4, 1, 1)]
    # Both models in the two base processes, then model fusion alone until max_repeats.
    assert spawned == [
        (0, ["early", "model"]),
        (1, ["early", "model"]),
        (2, ["model"]),
        (3, ["model"]),
        (4, ["model"]),
    ]
    answers = {r.model.split("-")[0]: r for r in recommend(run.cases)}
    assert answers["early"].verdict == "slower" and answers["early"].best.case.key.layout == "kept"
    assert answers["model"].inconclusive  # still open at the cap: said so, not called a tie
    assert run.complete
    # ... and the run's closing words name it, and only it.
    [note] = [n for n in sweep.closing_notes(run, tmp_path / "run") if n.startswith("still inconclusive")]
    assert "model-n3@tiny b1 cpu" in note and "early" not in note and "max_repeats" in note
    # As `bench` prints it: "[protocol]" is text, not console markup.
    cli._print_closing_notes(run, tmp_path / "run")
    assert "extra_seconds`, under [protocol])" in " ".join(capsys.readouterr().err.split())


def test_without_max_repeats_exactly_repeats_processes_run(tmp_path, artifacts_dir, monkeypatch):
    spawned, run = _run(tmp_path, artifacts_dir, monkeypatch, repeats=2)
    assert [p for p, _ in spawned] == [0, 1]
    assert {c.latency.processes for c in run.cases} == {2}


def test_extra_processes_take_only_the_open_contests_that_fit_in_extra_seconds(
    tmp_path, artifacts_dir, monkeypatch
):
    notes = []
    spawned, run = _run(
        tmp_path, artifacts_dir, monkeypatch, variants=("early", "model", "feature"), notes=notes,
        repeats=2, max_repeats=8, extra_seconds=35,
    )  # fmt: skip
    # 10 s per contest: both open contests fit in the first extra process (20 s of 35), one in
    # the second (30 s), none in a third, although max_repeats would allow five more.
    assert [p for p, _ in spawned] == [0, 1, 2, 3]
    assert [len(models) for _, models in spawned] == [3, 3, 2, 1]
    assert spawned[2][1] == ["feature", "model"] and spawned[3][1][0] in ("feature", "model")
    assert "early" not in spawned[2][1] + spawned[3][1]  # settled: it pays for no extra process
    # Said each time a contest is left open for lack of time: one at the second extra, both after.
    stops = [n for n in notes if "no time left" in n]
    assert len(stops) == 2 and all("extra_seconds = 35" in n for n in stops)
    assert sum(m in stops[0] for m in ("feature", "model")) == 1
    assert "feature" in stops[1] and "model" in stops[1]
    assert run.complete
