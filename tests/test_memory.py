from types import SimpleNamespace

import numpy as np

from ccnbench.memory import MemoryProbe, MemoryStats, current_rss_bytes, nvml_handle, pci_address


def test_cpu_probe_sees_memory_allocated_after_start():
    probe = MemoryProbe("cpu")
    probe.start()
    quiet = probe.read(False).peak_rss_delta_bytes
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    grown = probe.read(False, artifact_bytes=123)
    del block
    assert grown.peak_rss_delta_bytes >= 60 * 2**20 > quiet
    assert grown.artifact_bytes == 123 and grown.headline_bytes == grown.peak_rss_delta_bytes
    # A new start forgets the earlier peak.
    probe.start()
    assert probe.read(False).peak_rss_delta_bytes < 32 * 2**20
    assert current_rss_bytes() > 0


def test_round_trip():
    stats = MemoryStats("cuda", 1, 2, 3, 4, 5)
    assert MemoryStats.from_dict(stats.to_dict()) == stats
    assert stats.headline_bytes == 2


def test_cuda_headline_is_the_free_memory_drop_measured_alike_for_every_target():
    torch_target = MemoryStats("cuda", cuda_peak_allocated_bytes=100, cuda_free_drop_bytes=300)
    engine_target = MemoryStats("cuda", cuda_process_used_bytes=900, cuda_free_drop_bytes=200)
    assert torch_target.headline_bytes == 300 and engine_target.headline_bytes == 200
    # Runs stored before the free-memory figure existed keep their old headline.
    assert MemoryStats("cuda", cuda_peak_allocated_bytes=100).headline_bytes == 100
    assert MemoryStats.from_dict(engine_target.to_dict()) == engine_target


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
