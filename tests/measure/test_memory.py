from types import SimpleNamespace

import numpy as np
import pytest

from ccnbench.measure.memory import MemoryProbe, MemoryStats, current_rss_bytes, nvml_handle, pci_address


def test_cpu_probe_sees_memory_allocated_after_start():
    probe = MemoryProbe("cpu")
    probe.start()
    quiet = probe.read(False).peak_rss_delta_bytes
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    grown = probe.read(False, artifact_bytes=123)
    del block
    assert grown.headline_bytes >= 60 * 2**20 > quiet  # the headline on the CPU is the RSS it grew by
    assert grown.artifact_bytes == 123
    # A new start forgets the earlier peak.
    probe.start()
    assert probe.read(False).peak_rss_delta_bytes < 32 * 2**20
    assert current_rss_bytes() > 0


def test_round_trip():
    stats = MemoryStats("cuda", 1, 2, 3, 4, 5, 6, 7, 8)
    assert MemoryStats.from_dict(stats.to_dict()) == stats
    assert MemoryStats.from_dict({**stats.to_dict(), "a field of a later version": 1}) == stats


class FakeNvml:
    """NVML lookups by UUID and PCI address; an index lookup must never be used."""

    def __init__(self, uuid_ok: bool) -> None:
        self.uuid_ok, self.asked = uuid_ok, []

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.asked.append(("uuid", uuid))
        if not self.uuid_ok:
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return "by-uuid"

    def nvmlDeviceGetHandleByPciBusId(self, pci):
        self.asked.append(("pci", pci))
        return "by-pci"

    def nvmlDeviceGetHandleByIndex(self, index):  # pragma: no cover - the test fails if reached
        raise AssertionError("matched by index")


def test_nvml_device_is_matched_by_uuid_then_pci_address_never_index():
    props = SimpleNamespace(uuid="1b2c3d4e-aaaa-bbbb-cccc-000011112222", pci_domain_id=0, pci_bus_id=0x3B,
                            pci_device_id=0)  # fmt: skip
    nvml = FakeNvml(uuid_ok=True)
    assert nvml_handle(nvml, props) == "by-uuid"
    assert nvml.asked == [("uuid", "GPU-1b2c3d4e-aaaa-bbbb-cccc-000011112222")]
    nvml = FakeNvml(uuid_ok=False)
    assert nvml_handle(nvml, props) == "by-pci"
    assert nvml.asked[-1] == ("pci", "00000000:3b:00.0")
    assert pci_address(SimpleNamespace()) is None
    assert nvml_handle(FakeNvml(uuid_ok=False), SimpleNamespace(uuid="")) is None


class FakeCounters:
    """Scripted memory counters: each read returns the next value of its list."""

    def __init__(self, device: str, **series: list[int | None]) -> None:
        self.device, self.series, self.released = device, {k: list(v) for k, v in series.items()}, 0

    def _next(self, name: str) -> int | None:
        values = self.series.get(name)
        return values.pop(0) if values else None

    def release(self) -> None:
        self.released += 1

    def settle(self) -> None:
        pass

    def rss(self):
        return self._next("rss")

    def peak_rss(self):
        return self._next("peak_rss")

    def device_free(self):
        return self._next("free")

    def process_device(self):
        return self._next("process")

    def allocated(self):
        return self._next("allocated")

    def peak_allocated(self):
        return self._next("peak_allocated")


MiB = 2**20


@pytest.mark.parametrize("nvml", [True, False], ids=["nvml", "no-nvml"])
def test_cuda_headline_is_the_device_memory_a_member_took_whoever_allocates_it(nvml):
    """A torch target (whose allocator holds part of what it took) and an engine (no allocator
    figure), measured first or after members that hold 900 MiB: each took 200 MiB of the device,
    and each reads 200 MiB, whether or not NVML can see the process."""

    def member(uses_torch_allocator: bool, earlier: int) -> MemoryStats:
        counters = FakeCounters(
            "cuda", rss=[0], peak_rss=[0], free=[8000 * MiB - earlier, 7800 * MiB - earlier],
            process=[earlier + 300 * MiB, earlier + 500 * MiB] if nvml else [None, None],
            allocated=[earlier], peak_allocated=[earlier + 150 * MiB],
        )  # fmt: skip
        probe = MemoryProbe("cuda", counters)
        probe.start()
        return probe.read(uses_torch_allocator=uses_torch_allocator)

    read = [member(torch, earlier) for torch in (True, False) for earlier in (0, 900 * MiB)]
    assert {m.headline_bytes for m in read} == {200 * MiB}
    assert {m.headline_source for m in read} == {"nvml_process" if nvml else "mem_get_info"}


def test_runs_stored_before_the_free_memory_figure_keep_a_headline():
    """Before 2026-12 a CUDA record held the allocator's peak and NVML's absolute figure only."""
    old = MemoryStats.from_dict({"device": "cuda", "cuda_peak_allocated_bytes": 80 * MiB,
                                 "cuda_process_used_bytes": 900 * MiB})  # fmt: skip
    assert old.headline_bytes == 80 * MiB and old.headline_source == "allocator_peak"


def test_cuda_figures_are_deltas_from_the_members_own_baseline():
    # An earlier member left 500 MiB allocated and the process at 900 MiB: none of it is this one's.
    counters = FakeCounters(
        "cuda", rss=[100 * MiB], peak_rss=[130 * MiB], free=[8000 * MiB, 7700 * MiB],
        process=[900 * MiB, 1180 * MiB], allocated=[500 * MiB], peak_allocated=[740 * MiB],
    )  # fmt: skip
    probe = MemoryProbe("cuda", counters)
    probe.start()
    assert counters.released == 1  # cached blocks handed back before the baseline
    probe.drop_transients()
    assert counters.released == 2
    stats = probe.read(uses_torch_allocator=True, artifact_bytes=7)
    assert stats.cuda_process_delta_bytes == 280 * MiB  # NVML: this process's growth
    assert stats.cuda_free_drop_bytes == 300 * MiB
    assert stats.cuda_allocator_peak_delta_bytes == 240 * MiB  # peak above what was allocated at the baseline
    assert stats.peak_rss_delta_bytes == 30 * MiB and stats.artifact_bytes == 7
    assert stats.headline_bytes == 280 * MiB and stats.headline_source == "nvml_process"
    assert MemoryStats.from_dict(stats.to_dict()) == stats


def test_cuda_headline_falls_back_to_the_free_memory_drop_without_nvml():
    counters = FakeCounters(
        "cuda", rss=[0], peak_rss=[0], free=[8000 * MiB, 7900 * MiB], process=[None, None],
        allocated=[10 * MiB], peak_allocated=[50 * MiB],
    )  # fmt: skip
    probe = MemoryProbe("cuda", counters)
    probe.start()
    stats = probe.read(uses_torch_allocator=False)
    assert stats.cuda_process_delta_bytes is None and stats.cuda_allocator_peak_delta_bytes is None
    assert stats.headline_bytes == 100 * MiB and stats.headline_source == "mem_get_info"


def test_cpu_figure_is_peak_rss_above_the_baseline_and_never_negative():
    probe = MemoryProbe("cpu", FakeCounters("cpu", rss=[200 * MiB], peak_rss=[150 * MiB]))
    probe.start()
    stats = probe.read(False)
    assert stats.peak_rss_delta_bytes == 0 and stats.headline_source == "rss"
    assert stats.cuda_free_drop_bytes is None and stats.cuda_process_delta_bytes is None


# Early fusion's kept and merged layouts are one graph with the same weights: what each holds is
# the same, so their RSS deltas in one contest must agree whichever goes first. What is left is
# allocator granularity: pymalloc arenas are 1 MiB, glibc grows its heap in 128 KiB steps. At the
# tiny preset they agreed within 0.4 MiB here; with runtimes warmed but no memory pass, the first
# member read 1.7-7.3 MiB more.
RSS_TOLERANCE = 1.5 * MiB


@pytest.mark.slow  # two ONNX exports when run alone; the contest itself takes a few seconds
def test_early_fusion_kept_and_merged_hold_the_same_rss_in_either_order(artifacts_dir):
    from dataclasses import replace

    from ccnbench.backends import parse_targets
    from ccnbench.measure.timing import QUICK
    from ccnbench.run import contest, plan, selection

    protocol = replace(QUICK, warmup_iterations=1, warmup_seconds=0, min_rounds=1, block_seconds=0.001,
                       contest_seconds=0, repeats=1)  # fmt: skip
    sources = selection.sources(preset="tiny", variants="early", layouts_="all")
    groups = plan.case_groups(
        sources, parse_targets("torch:cpu,ort:cpu"), ["fp32"], [1], artifacts_dir, protocol=protocol
    )
    match = contest.plan(groups)[0][0]
    layouts = [(str(g.target), g.source.layout) for g in match.groups]
    orders = {p: [layouts[i] for i in contest.memory_order(match, p)] for p in range(8)}
    # Two processes in which kept and merged of each target come in opposite orders.
    first = next(
        p for p, o in orders.items() if o.index(("torch:cpu", "kept")) < o.index(("torch:cpu", "merged"))
    )
    second = next(
        p for p, o in orders.items() if o.index(("torch:cpu", "kept")) > o.index(("torch:cpu", "merged"))
    )
    for process in (first, second):
        cases = {(c.key.target, c.key.layout): c for c in contest.run_contest(match, process)}
        assert all(c.status == "ok" for c in cases.values()), [c.message for c in cases.values()]
        for target in ("torch:cpu", "ort:cpu"):
            kept, merged = (
                cases[target, layout].memory.peak_rss_delta_bytes for layout in ("kept", "merged")
            )
            assert cases[target, "kept"].details["memory_pass"] == "own"
            assert abs(kept - merged) <= RSS_TOLERANCE, (process, target, kept / MiB, merged / MiB)


def _tiny_contest(artifacts_dir, targets="torch:cpu,ort:cpu"):
    from ccnbench.backends import parse_targets
    from ccnbench.measure.timing import QUICK
    from ccnbench.run import contest, plan, selection

    sources = selection.sources(preset="tiny", variants="early", layouts_="all")
    groups = plan.case_groups(sources, parse_targets(targets), ["fp32"], [1], artifacts_dir, protocol=QUICK)
    return contest.plan(groups)[0][0]


def test_every_runtime_is_warmed_once_before_any_member_is_prepared(artifacts_dir, monkeypatch):
    from ccnbench.backends.onnxruntime import OrtBackend
    from ccnbench.backends.torch_eager import TorchBackend
    from ccnbench.run import case_group, contest

    events: list[str] = []

    def broken_warm(self, device, options):
        events.append(f"warm {self.name}:{device}")
        raise RuntimeError("a runtime that cannot warm is left to fail in its own preparation")

    monkeypatch.setattr(
        TorchBackend, "warm", lambda self, device, options: events.append(f"warm torch:{device}")
    )
    monkeypatch.setattr(OrtBackend, "warm", broken_warm)

    def prepare(group, timing_only=False):
        events.append(f"prepare {group.target}")
        raise RuntimeError("stop here")

    monkeypatch.setattr(case_group, "prepare", prepare)
    match = _tiny_contest(artifacts_dir)
    cases = list(contest.run_contest(match, process=0))
    assert all(c.status == "failed" for c in cases) and len(cases) == 4
    assert sorted(events[:2]) == ["warm ort:cpu", "warm torch:cpu"]
    assert [e.split()[0] for e in events[2:]] == ["prepare"] * 4


def test_the_memory_order_is_a_seeded_shuffle_that_changes_with_the_process(artifacts_dir):
    from ccnbench.run import contest

    match = _tiny_contest(artifacts_dir)
    orders = [contest.memory_order(match, p) for p in range(12)]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert orders == [contest.memory_order(match, p) for p in range(12)]  # a rerun repeats it
    assert len({o[0] for o in orders}) > 1  # no member is always first


def test_long_lived_objects_are_frozen_only_inside_and_garbage_is_still_collected():
    import gc
    import weakref

    from ccnbench.measure.memory import long_lived_frozen

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    before = cycle()  # garbage on entry: collected, not frozen
    frozen_before = gc.get_freeze_count()
    with long_lived_frozen():
        assert before() is None
        assert gc.get_freeze_count() > frozen_before
        inside = cycle()  # made inside: a full collection still finds it
        gc.collect()
        assert inside() is None
    assert gc.get_freeze_count() == 0
