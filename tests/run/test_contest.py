"""Contest bookkeeping: who competes with whom, pairing, stopping, merging processes, one real contest."""

import contextlib
import gc
import random
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from ccnbench.answers import stats
from ccnbench.backends import parse_targets
from ccnbench.measure.timing import QUICK, Block, LatencyStats, Protocol
from ccnbench.results import CaseKey, CaseResult
from ccnbench.run import case_group, contest, plan, selection

PROTOCOL = replace(QUICK, block_seconds=0.005, min_rounds=4, contest_seconds=0.2, warmup_seconds=0.01)


def _groups(artifacts, variants="early,decision", targets="torch:cpu,ort:cpu", protocol=PROTOCOL):
    sources = selection.sources(preset="tiny", variants=variants, layouts_="all")
    return plan.case_groups(
        sources, parse_targets(targets.split(",")), ["fp32"], [1, 2], artifacts, protocol=protocol
    )


def test_plan_groups_every_format_of_one_model(tmp_path):
    contests, alone = contest.plan(_groups(tmp_path))
    assert alone == []
    assert len(contests) == 2  # early and decision
    for match in contests:
        assert len(match.groups) == 4  # kept/merged x torch/ort
        assert len({(g.source.label, g.source.digest) for g in match.groups}) == 1
    again = contest.Contest.from_dict(contests[0].to_dict())
    assert again.id == contests[0].id and len(again.groups) == 4


def test_contest_ids_are_unique_per_run_and_batch_bucket(tmp_path):
    groups = _groups(tmp_path, variants="early")
    (one,), _ = contest.plan(groups, "run-a@2026-12-01T05:00:00+00:00")
    (again,), _ = contest.plan(groups, "run-a@2026-12-01T05:00:00+00:00")
    (other,), _ = contest.plan(groups, "run-a@2026-12-01T06:00:00+00:00")
    assert one.id == again.id  # a resumed run finds its contests again
    assert one.id != other.id  # two runs never share a contest id, even with the same run id
    assert "/b1-2/" in one.id
    b1 = [replace(g, batches=(1,)) for g in groups]
    (first,), _ = contest.plan(b1, "r")
    mixed, _ = contest.plan(b1 + [replace(g, batches=(2,)) for g in groups], "r")
    assert len(mixed) == 2 and len({m.id for m in mixed}) == 2 and first.id in {m.id for m in mixed}


def test_untimed_lone_and_non_sharing_groups_run_alone(tmp_path, monkeypatch):
    assert contest.plan(_groups(tmp_path, protocol=None)) == ([], _groups(tmp_path, protocol=None))
    lone = _groups(tmp_path, variants="early", targets="torch:cpu")
    lone = [g for g in lone if g.source.layout == "kept"]
    assert contest.plan(lone) == ([], lone)
    from ccnbench.backends.onnxruntime import OrtBackend

    monkeypatch.setattr(OrtBackend, "shares_process", False)
    contests, alone = contest.plan(_groups(tmp_path, variants="early"))
    assert {str(g.target) for g in alone} == {"ort:cpu"} and len(contests[0].groups) == 2


def test_partners_are_reference_and_kept(tmp_path):
    class M:
        def __init__(self, g):
            self.group = g

    members = [M(g) for g in _groups(tmp_path, variants="early")]
    names = [(str(m.group.target), m.group.source.layout) for m in members]
    pairs = {(names[a], names[b]) for a, b in contest.partners(members)}
    assert pairs == {
        (("ort:cpu", "kept"), ("torch:cpu", "kept")),
        (("ort:cpu", "merged"), ("torch:cpu", "merged")),
        (("torch:cpu", "merged"), ("torch:cpu", "kept")),
        (("ort:cpu", "merged"), ("ort:cpu", "kept")),
    }


def test_convergence_needs_every_pair_inside_the_width():
    steady = [[1.0, 1.01, 0.99, 1.0, 1.0], [2.0, 2.0, 2.01, 1.99, 2.0]]
    assert contest.converged(steady, [(1, 0)], 0.03)
    shaky = [[1.0, 1.3, 0.8, 1.0, 1.2], [2.0, 2.0, 2.01, 1.99, 2.0]]
    assert not contest.converged(shaky, [(1, 0)], 0.03)
    assert not contest.converged([[1.0, 1.0], [2.0, 2.0]], [(1, 0)], 0.03)  # too few rounds
    # the same rule the results show: the within-process interval of stats.log_interval
    logs = np.log(np.asarray(steady[1]) / np.asarray(steady[0]))
    assert stats.log_interval({0: logs}).scope == stats.WITHIN


def test_processes_merge_their_blocks():
    key = CaseKey("m", "d", "kept", "torch:cpu", "fp32", 1)

    def case(process):
        blocks = [Block(process, r, (1.0 + r / 10, 1.1)) for r in range(3)]
        return CaseResult(key, "ok", latency=LatencyStats.from_blocks(blocks, 1, "perf_counter"), contest="c")

    merged = contest.merge_processes(contest.merge_processes(None, case(0)), case(1))
    assert merged.latency.processes == 2 and len(merged.latency.blocks) == 6
    assert merged.latency.iterations == 12 and merged.contest == "c"
    again = LatencyStats.from_dict(merged.latency.to_dict())
    assert again.blocks == merged.latency.blocks


@pytest.fixture(scope="module")
def early_contest(artifacts_dir):
    """One real contest of early fusion (torch and ORT, kept and merged), run once as process 2."""
    groups = [g for g in _groups(artifacts_dir, variants="early") if g.batches]
    match = contest.plan(groups)[0][0]
    return match, list(contest.run_contest(match, process=2))


def test_a_real_contest_times_every_member_in_the_same_rounds(early_contest):
    match, cases = early_contest
    assert len(cases) == 8 and all(c.passed for c in cases), [c.message for c in cases]
    by_key = {c.key: c for c in cases}
    for c in cases:
        assert c.contest == match.id and c.memory is not None and c.build_seconds is not None
        assert {b.process for b in c.latency.blocks} == {2}
        assert len(c.latency.blocks) >= PROTOCOL.min_rounds
    kept = by_key[CaseKey("early-n3@tiny", cases[0].key.digest, "kept", "torch:cpu", "fp32", 1)]
    merged = by_key[CaseKey("early-n3@tiny", cases[0].key.digest, "merged", "torch:cpu", "fp32", 1)]
    assert [b.round for b in kept.latency.blocks] == [b.round for b in merged.latency.blocks]
    assert stats.paired_ratio(merged.latency, kept.latency) is not None


def test_a_checked_contest_process_only_times(early_contest, monkeypatch):
    """A later process of a contest whose agreement and memory an earlier one took: timing alone
    (no oracle pass, no memory probe), and the merged case keeps the first process's agreement and
    memory with both processes' blocks."""
    match, cases = early_contest
    first = {c.key: c for c in cases}

    def refuse(*args, **kwargs):
        raise AssertionError("a timing-only process started a memory probe or an oracle pass")

    monkeypatch.setattr(case_group.MemoryProbe, "start", refuse)
    monkeypatch.setattr(case_group, "reference", refuse)
    later = list(contest.run_contest(match, process=3, checked=True))
    assert len(later) == len(first) == 8
    for c in later:
        assert c.status == "ok" and c.agreement is None and c.memory is None
        assert c.details == {"timing_only": True} and {b.process for b in c.latency.blocks} == {3}
        merged = contest.merge_processes(first[c.key], c)
        assert merged.agreement == first[c.key].agreement and merged.memory == first[c.key].memory
        assert {b.process for b in merged.latency.blocks} == {2, 3} and merged.passed


# contest.interleave alone, on members that cost nothing: no settle, two-iteration blocks.
CHEAP = Protocol(block_seconds=0.0, settle_seconds=0.0, min_rounds=4, contest_seconds=60.0)


def _interleave(members, protocol=CHEAP, pairs=((1, 0),), batch=8, process=3, calls_made=None):
    """Blocks of ``members`` fake members, and the member each block was timed for, in order. A
    call checks it runs inside its own member's context with gc off and counts itself in
    ``calls_made``; 10 s after the start it raises, so a loop that never stops fails, not hangs."""
    order: list[int] = []
    inside: list[int] = []
    counted = calls_made if calls_made is not None else [0]
    deadline = time.perf_counter() + 10.0

    @contextlib.contextmanager
    def around(i):
        order.append(i)
        inside.append(i)
        yield
        inside.pop()

    def call_of(i):
        def call():
            assert inside == [i] and not gc.isenabled()
            counted[0] += 1
            if time.perf_counter() > deadline:
                raise RuntimeError("the rounds never stopped")

        return call

    calls = [call_of(i) for i in range(members)]
    runners = [SimpleNamespace(is_cuda=False)] * members
    blocks = contest.interleave(calls, runners, list(pairs), protocol, batch, process, around=around)
    return blocks, order


def _converged_after(rounds, monkeypatch):
    seen = []

    def fake(medians, pairs, width):
        seen.append((len(medians), {len(m) for m in medians}, list(pairs), width))
        return len(medians[0]) >= rounds

    monkeypatch.setattr(contest, "converged", fake)
    return seen


def test_interleave_stops_at_min_rounds_once_converged(monkeypatch):
    seen = _converged_after(0, monkeypatch)
    blocks, _ = _interleave(3, pairs=[(1, 0), (2, 0)])
    assert [len(b) for b in blocks] == [CHEAP.min_rounds] * 3
    # asked only once min_rounds ran, with every member's medians so far and the pairs and width
    assert seen == [(3, {CHEAP.min_rounds}, [(1, 0), (2, 0)], CHEAP.target_width)]


def test_interleave_goes_past_min_rounds_until_converged(monkeypatch):
    _converged_after(CHEAP.min_rounds + 3, monkeypatch)
    blocks, _ = _interleave(2)
    assert [len(b) for b in blocks] == [CHEAP.min_rounds + 3] * 2


def test_interleave_goes_past_min_rounds_until_contest_seconds_are_spent(monkeypatch):
    _converged_after(10**9, monkeypatch)  # never
    calls_made = [0]  # the contest's clock: 1 ms a call, whatever gc.collect costs between rounds
    monkeypatch.setattr(contest, "time", SimpleNamespace(perf_counter=lambda: calls_made[0] / 1000))
    protocol = replace(CHEAP, min_rounds=3, contest_seconds=0.05)
    blocks, _ = _interleave(2, protocol, calls_made=calls_made)
    # a round is two blocks of three calls (the first one discarded): 48 ms after 8 rounds, 54 after 9
    assert [len(b) for b in blocks] == [9, 9]


def test_a_call_known_to_fill_its_block_skips_the_first_rounds_discarded_call(monkeypatch):
    _converged_after(3, monkeypatch)
    made = [0, 0]

    def slow(i):
        def call():
            made[i] += 1
            time.sleep(0.03)

        return call

    protocol = replace(CHEAP, block_seconds=0.02, min_rounds=3)
    runners = [SimpleNamespace(is_cuda=False)] * 2
    # member 0's warm-up took 31 ms (it fills a 20 ms block); nothing is known of member 1
    blocks = contest.interleave([slow(0), slow(1)], runners, [(1, 0)], protocol, 8, 0, known_ms=[31.0, None])
    assert [len(b.samples_ms) for b in blocks[0]] == [1, 1, 1] and made[0] == 3
    # member 1 pays its first round's discarded call, then knows from its own blocks
    assert [len(b.samples_ms) for b in blocks[1]] == [1, 1, 1] and made[1] == 4


def test_interleave_times_every_member_once_per_round_in_a_seeded_order_that_changes(monkeypatch):
    rounds, members, batch, process = 8, 4, 8, 3
    _converged_after(rounds, monkeypatch)
    gc.enable()
    blocks, order = _interleave(members, batch=batch, process=process)
    assert gc.isenabled()  # gc is back on after the rounds
    for member_blocks in blocks:
        assert [b.round for b in member_blocks] == list(range(rounds))
        assert {b.process for b in member_blocks} == {process}
        assert all(len(b.samples_ms) == 2 for b in member_blocks)  # the first call is not kept
    per_round = [order[r * members : (r + 1) * members] for r in range(rounds)]
    assert all(sorted(r) == list(range(members)) for r in per_round)
    assert len({tuple(r) for r in per_round}) > 1  # the order changes between rounds
    rng, expected = random.Random(process * 100_003 + batch), list(range(members))
    for r in per_round:  # and a rerun repeats it: the shuffle is seeded by process and batch
        rng.shuffle(expected)
        assert r == expected
