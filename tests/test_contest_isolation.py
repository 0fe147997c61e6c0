"""Members of one contest process leave each other alone: settings, idle threads."""

import threading
import time
from dataclasses import replace

import torch

from ccnbench import check, contest, selection
from ccnbench.backends import parse_targets
from ccnbench.backends.settings import ProcessSettings, applied
from ccnbench.backends.torch_eager import TorchBackend
from ccnbench.timing import QUICK

PROTOCOL = replace(QUICK, block_seconds=0.005, min_rounds=4, contest_seconds=0.2, warmup_seconds=0.01)


def test_settings_apply_and_restore():
    before = ProcessSettings.read()
    other = replace(before, cudnn_benchmark=not before.cudnn_benchmark, cudnn_tf32=not before.cudnn_tf32)
    with applied(other):
        assert ProcessSettings.read() == other
    assert ProcessSettings.read() == before


def test_each_member_runs_with_its_own_settings_and_the_process_gets_its_own_back(artifacts_dir, monkeypatch):
    """Kept sets one thread and no cuDNN autotuning, merged two threads and autotuning (as a CUDA
    member at another precision would): every call of each member, its checks and every timed
    block, sees its own settings, whichever member was prepared or timed last."""
    own = {"kept": (1, False), "merged": (2, True)}
    seen: dict[str, set[tuple[int, bool]]] = {"kept": set(), "merged": set()}
    prepare = TorchBackend.prepare

    def prepare_with_settings(self, source, target, options):
        runner = prepare(self, source, target, options)
        threads, autotune = own[source.layout]
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = autotune
        infer = runner.infer

        def recording(inputs):
            seen[source.layout].add((torch.get_num_threads(), torch.backends.cudnn.benchmark))
            return infer(inputs)

        runner.infer = recording
        return runner

    monkeypatch.setattr(TorchBackend, "prepare", prepare_with_settings)
    sources = selection.sources(preset="tiny", variants="early", layouts_="all")
    groups = check.plan(
        sources, parse_targets(["torch:cpu"]), ["fp32"], [1], artifacts_dir, protocol=PROTOCOL
    )
    before = ProcessSettings.read()
    (match,), _ = contest.plan(groups)
    cases = list(contest.run_contest(match))
    assert all(c.passed and c.latency is not None for c in cases), [c.message for c in cases]
    assert seen == {"kept": {own["kept"]}, "merged": {own["merged"]}}
    assert ProcessSettings.read() == before


def test_every_block_follows_a_settle(artifacts_dir, monkeypatch):
    """The previous member's idle threads get up to ``settle_seconds`` to stop before each block."""
    limits: list[float] = []
    monkeypatch.setattr(contest, "settle", lambda limit: limits.append(limit) or 0.0)
    protocol = replace(PROTOCOL, settle_seconds=0.25)
    sources = selection.sources(preset="tiny", variants="early", layouts_="all")
    groups = check.plan(
        sources, parse_targets(["torch:cpu"]), ["fp32"], [1], artifacts_dir, protocol=protocol
    )
    (match,), _ = contest.plan(groups)
    cases = list(contest.run_contest(match))
    blocks = sum(len(c.latency.blocks) for c in cases)
    assert limits == [0.25] * blocks and blocks > 0


def test_settle_waits_while_another_thread_spins_and_returns_once_the_process_is_idle():
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        started = time.perf_counter()
        waited = contest.settle(0.2)
        assert time.perf_counter() - started >= 0.2 and waited >= 0.2  # busy all along: the cap
    finally:
        stop.set()
        spinner.join()
    assert contest.settle(30.0) < 30.0  # idle: returns on its own, long before the cap
    assert contest.settle(0.0) == 0.0
