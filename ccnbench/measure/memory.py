"""Memory a target costs, measured the same way for every target on a device, whatever the order.

Each member's memory is its own delta from its own baseline. Before the baseline, memory freed
earlier is handed back (glibc's retained pages; torch's cached blocks and cuDNN workspaces), so a
member never reuses what an earlier one left and never pays for it either. One-time costs of a
runtime (CUDA context, cuDNN/cuBLAS handles, OpenMP pools, imports) are paid before any baseline
by the contest's warm-up (``Backend.warm``), never by whichever member happens to go first.

- CPU: peak resident set during preparation and the first inference, minus the resident set at
  the baseline (Linux lets a process reset its own peak, ``/proc/self/clear_refs``).
- CUDA: the headline is this process's device memory growth, from NVML's per-process figure
  (``nvmlDeviceGetComputeRunningProcesses``), falling back to the drop in the device's free memory
  (``torch.cuda.mem_get_info``) where NVML cannot see the process (PID namespaces). Either counts
  what the target holds whoever allocates it: torch's caching allocator, ONNX Runtime's arena,
  TensorRT's engine and context memory, cuDNN workspaces. They keep what they allocated until the
  runner closes, so the reading after the first inference is the peak, and no sampling thread
  takes the GIL from the timed work. For torch targets the allocator's peak above what was
  allocated at the baseline is kept beside it (earlier members' live tensors are not counted).

The counters are read through ``Counters``, so the arithmetic is tested with fakes.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class MemoryStats:
    device: str
    peak_rss_delta_bytes: int | None = None  # peak RSS minus RSS at the member's baseline
    # Before 2026-12 (order-dependent, kept for old runs): the allocator's absolute peak after a
    # reset that kept earlier members' live tensors.
    cuda_peak_allocated_bytes: int | None = None
    cuda_process_used_bytes: int | None = None  # NVML: this process's device memory, absolute
    engine_device_memory_bytes: int | None = None  # TensorRT: activation memory of the engine
    artifact_bytes: int | None = None
    cuda_free_drop_bytes: int | None = None  # device free memory lost since the baseline
    cuda_process_delta_bytes: int | None = None  # NVML: this process's device memory since the baseline
    cuda_allocator_peak_delta_bytes: int | None = None  # torch targets: allocator peak above the baseline

    @property
    def headline_bytes(self) -> int | None:
        """The one number a table shows for this device."""
        if self.device == "cpu":
            return self.peak_rss_delta_bytes
        if self.cuda_process_delta_bytes is not None:  # this process's device memory
            return self.cuda_process_delta_bytes
        if self.cuda_free_drop_bytes is not None:  # the same where NVML cannot see the process
            return self.cuda_free_drop_bytes
        return self.cuda_peak_allocated_bytes or self.cuda_process_used_bytes

    @property
    def headline_source(self) -> str | None:
        """Which counter the headline comes from."""
        if self.device == "cpu":
            return "rss" if self.peak_rss_delta_bytes is not None else None
        for name in ("cuda_process_delta_bytes", "cuda_free_drop_bytes", "cuda_peak_allocated_bytes"):
            if getattr(self, name) is not None:
                return {
                    "cuda_process_delta_bytes": "nvml_process",
                    "cuda_free_drop_bytes": "mem_get_info",
                }.get(name, "allocator_peak")
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryStats:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class Counters:
    """The process's memory counters. Device counters are None on the CPU (and where a library
    cannot answer); tests substitute fakes."""

    def __init__(self, device: str) -> None:
        self.device = device

    def release(self) -> None:
        """Hand freed memory back (glibc; on CUDA torch's cached blocks) and reset the peaks."""
        release_freed_memory()
        reset_peak_rss()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def settle(self) -> None:
        """Wait for queued device work before reading (outputs and workspaces are then allocated)."""
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def rss(self) -> int:
        return current_rss_bytes()

    def peak_rss(self) -> int:
        return peak_rss_bytes()

    def device_free(self) -> int | None:
        if self.device != "cuda":
            return None
        import torch

        return int(torch.cuda.mem_get_info()[0])

    def process_device(self) -> int | None:
        return nvml_process_used_bytes() if self.device == "cuda" else None

    def allocated(self) -> int | None:
        if self.device != "cuda":
            return None
        import torch

        return int(torch.cuda.memory_allocated())

    def peak_allocated(self) -> int | None:
        if self.device != "cuda":
            return None
        import torch

        return int(torch.cuda.max_memory_allocated())


@dataclass(frozen=True)
class Baseline:
    rss: int
    device_free: int | None
    process_device: int | None
    allocated: int | None


def _delta(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else max(0, after - before)


class MemoryProbe:
    """Start right before preparing a runner; after its first inference ``drop_transients``, then
    read after a second one."""

    def __init__(self, device: str, counters: Counters | None = None) -> None:
        self.device = device
        self.counters = counters or Counters(device)
        self.baseline = Baseline(0, None, None, None)

    def start(self) -> None:
        c = self.counters
        c.release()
        self.baseline = Baseline(c.rss(), c.device_free(), c.process_device(), c.allocated())

    def drop_transients(self) -> None:
        """Between the first inference and the reading: hand back what the first call used once
        (cuDNN's algorithm search workspaces, a cold allocator's blocks) and reset the peaks, so
        the reading after a second call is the member's steady state, the same whether or not an
        earlier member already searched the same shapes."""
        self.counters.release()

    def read(
        self, uses_torch_allocator: bool, engine_bytes: int | None = None, artifact_bytes: int | None = None
    ) -> MemoryStats:
        c, base = self.counters, self.baseline
        c.settle()
        rss = max(0, c.peak_rss() - base.rss)
        if self.device != "cuda":
            return MemoryStats("cpu", peak_rss_delta_bytes=rss, artifact_bytes=artifact_bytes)
        free = c.device_free()
        process = c.process_device()
        return MemoryStats(
            "cuda",
            peak_rss_delta_bytes=rss,
            cuda_process_used_bytes=process,
            engine_device_memory_bytes=engine_bytes,
            artifact_bytes=artifact_bytes,
            cuda_free_drop_bytes=None
            if free is None or base.device_free is None
            else max(0, base.device_free - free),
            cuda_process_delta_bytes=_delta(process, base.process_device),
            cuda_allocator_peak_delta_bytes=_delta(c.peak_allocated(), base.allocated)
            if uses_torch_allocator
            else None,
        )


def current_rss_bytes() -> int:
    fields = _status_fields()
    if "VmRSS" in fields:
        return fields["VmRSS"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    fields = _status_fields()
    if "VmHWM" in fields:
        return fields["VmHWM"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> None:
    """Give memory freed earlier in this process back to the OS before a baseline is taken.

    glibc keeps freed blocks (and raises its mmap threshold after large frees), so without this
    a model prepared after other work (the oracle's float64 pass, an earlier member) reuses
    retained pages, RSS does not grow, and its memory would be under-reported.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def long_lived_frozen() -> Iterator[None]:
    """Inside: every object alive on entry (imported modules, the runtimes' bindings: ~180 k
    objects once torch, ONNX Runtime and OpenVINO are loaded) sits in the collector's permanent
    generation, so a full collection scans only what was made since. ``release_freed_memory``
    collects before every memory baseline and reading, and each of those scans took ~116 ms
    (5.3 s of a 19 s contest of six members); frozen, ~0.01 ms. Collected first, so no garbage is
    frozen; moved back on exit, so nothing frozen outlives the block unreachable and uncollected.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def nvml_process_used_bytes() -> int | None:
    """Device memory NVML attributes to this process (None without NVML or in containers that hide it).

    A PID-namespaced container often shows NVML host PIDs, so this is commonly None there, and the
    headline falls back to the drop in free device memory (the same for every target of the run).
    """
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            import torch

            handle = nvml_handle(pynvml, torch.cuda.get_device_properties(torch.cuda.current_device()))
            if handle is None:
                return None
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    return int(proc.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML errors (no driver, no permission) mean "unknown", not a failed case
        return None
    return None


def nvml_handle(pynvml: Any, props: Any) -> Any:
    """The NVML device of a torch device, matched by UUID, else by PCI address; never by index,
    since CUDA_VISIBLE_DEVICES and NVML's enumeration need not agree."""
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:
        with contextlib.suppress(Exception):
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    pci = pci_address(props)
    if pci:
        with contextlib.suppress(Exception):
            return pynvml.nvmlDeviceGetHandleByPciBusId(pci)
    return None


def pci_address(props: Any) -> str | None:
    """``domain:bus:device.0`` in NVML's notation from torch's device properties, if it has them."""
    try:
        domain, bus, device = int(props.pci_domain_id), int(props.pci_bus_id), int(props.pci_device_id)
    except (AttributeError, TypeError, ValueError):
        return None
    return f"{domain:08x}:{bus:02x}:{device:02x}.0"


def _status_fields() -> dict[str, int]:
    try:
        text = _STATUS.read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key in ("VmRSS", "VmHWM") and parts and parts[0].isdigit():
            fields[key] = int(parts[0]) * 1024
    return fields
