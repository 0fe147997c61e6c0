"""Members of one contest process leave each other alone: settings, idle threads."""

from dataclasses import replace

import torch

from ccnbench.backends import parse_targets
from ccnbench.backends.settings import ProcessSettings, applied
from ccnbench.backends.torch_eager import TorchBackend
from ccnbench.measure.timing import QUICK
from ccnbench.run import contest, plan, selection

PROTOCOL = replace(QUICK, block_seconds=0.005, min_rounds=4, contest_seconds=0.2, warmup_seconds=0.01)


def test_settings_apply_and_restore():
    before = ProcessSettings.read()
    other = replace(before, cudnn_benchmark=not before.cudnn_benchmark, cudnn_tf32=not before.cudnn_tf32)
    with applied(other):
        assert ProcessSettings.read() == other
    assert ProcessSettings.read() == before


def test_each_member_runs_with_its_own_settings_after_a_settle_and_the_process_gets_its_own_back(
    artifacts_dir, monkeypatch
):
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
    limits: list[float] = []  # and before every block, a settle of up to settle_seconds
    monkeypatch.setattr(contest, "settle", lambda limit: limits.append(limit) or 0.0)
    protocol = replace(PROTOCOL, settle_seconds=0.25)
    sources = selection.sources(preset="tiny", variants="early", layouts_="all")
    groups = plan.case_groups(
        sources, parse_targets(["torch:cpu"]), ["fp32"], [1], artifacts_dir, protocol=protocol
    )
    before = ProcessSettings.read()
    (match,), _ = contest.plan(groups)
    cases = list(contest.run_contest(match))
    assert all(c.passed and c.latency is not None for c in cases), [c.message for c in cases]
    assert seen == {"kept": {own["kept"]}, "merged": {own["merged"]}}
    assert ProcessSettings.read() == before
    assert limits == [0.25] * sum(len(c.latency.blocks) for c in cases) and limits


class _Clock:
    """Wall and process CPU time for ``settle``: other threads spin (CPU time grows as fast as the
    wall clock) until ``spin_until``, then sleep."""

    def __init__(self, spin_until: float) -> None:
        self.wall, self.cpu, self.spin_until = 0.0, 0.0, spin_until

    def sleep(self, seconds: float) -> None:
        busy = max(0.0, min(self.wall + seconds, self.spin_until) - self.wall)
        self.wall += seconds
        self.cpu += busy


def _settle_with(clock: _Clock, limit: float, monkeypatch) -> float:
    monkeypatch.setattr(contest.time, "sleep", clock.sleep)
    monkeypatch.setattr(contest.time, "perf_counter", lambda: clock.wall)
    monkeypatch.setattr(contest.time, "process_time", lambda: clock.cpu)
    return contest.settle(limit)


def test_settle_waits_until_the_other_threads_stop_spinning(monkeypatch):
    waited = _settle_with(_Clock(spin_until=0.1), 0.5, monkeypatch)
    assert 0.1 <= waited <= 0.1 + 4 * contest._SETTLE_WINDOW  # three quiet windows after the spinning
    assert _settle_with(_Clock(spin_until=0.0), 0.5, monkeypatch) <= 4 * contest._SETTLE_WINDOW


def test_settle_gives_up_at_its_limit(monkeypatch):
    assert 0.2 <= _settle_with(_Clock(spin_until=10.0), 0.2, monkeypatch) < 0.2 + 2 * contest._SETTLE_WINDOW
    assert _settle_with(_Clock(spin_until=10.0), 0.0, monkeypatch) == 0.0
