"""max_repeats: after ``repeats`` processes, only the contests whose answer is still inconclusive
get more processes, one at a time, up to ``max_repeats``. The worker is faked: no process starts."""

from ccnbench import contest, results, sweep
from ccnbench.agreement import Agreement
from ccnbench.config import SweepConfig
from ccnbench.recommend import recommend
from ccnbench.timing import Block, LatencyStats

# Per model, kept's and merged's latency (ms) in each process. Early fusion: merged clearly
# about twice as slow in every process (never exactly: identical processes prove nothing, and
# make an interval not computable). Model fusion: merged 12 % slower in even processes and 10 %
# faster in odd ones (kept being the slower one there), so its interval contains parity and is far too wide for a tie.
_MERGED_OVER_KEPT = {"early": lambda p: 2.0 + 0.01 * p, "model": lambda p: 1.12 if p % 2 == 0 else 0.90}


def _fake_worker(spawned, checked=None):
    def spawn(payload, groups, timeout, log_path, writer, deadline, merged=None):
        chain, process = [contest.Contest.from_dict(c) for c in payload["contests"]], payload["process"]
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


def _run(tmp_path, artifacts_dir, monkeypatch, checked=None, **protocol):
    spawned = []
    monkeypatch.setattr(sweep, "_spawn", _fake_worker(spawned, checked))
    config = SweepConfig.from_dict(
        {"name": "t", "preset": "tiny", "variants": ["early", "model"], "layouts": ["kept", "merged"],
         "targets": "ort:cpu", "batches": [1], "quick": True, "timeout": 60, "isolation": "device",
         "artifacts": str(artifacts_dir), "protocol": {"contest": True, **protocol}}
    )  # fmt: skip
    run_dir = tmp_path / "run"
    return spawned, sweep.execute(sweep.start(config, run_dir), config, run_dir)


def test_only_the_inconclusive_contest_gets_more_processes(tmp_path, artifacts_dir, monkeypatch):
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


def test_without_max_repeats_exactly_repeats_processes_run(tmp_path, artifacts_dir, monkeypatch):
    spawned, run = _run(tmp_path, artifacts_dir, monkeypatch, repeats=2)
    assert [p for p, _ in spawned] == [0, 1]
    assert {c.latency.processes for c in run.cases} == {2}
