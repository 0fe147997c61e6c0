import numpy as np

from ccnbench.memory import MemoryProbe, MemoryStats, current_rss_bytes


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
