"""Memory a target costs: peak RSS growth on the CPU; device free-memory drop on CUDA.

The CPU number is the worker's peak resident set after the case minus its resident set just
before the model was prepared, so imports and the Python runtime are not counted. Linux lets a
process reset its own peak (``/proc/self/clear_refs``), which makes each probe start fresh.

On CUDA every target is measured the same way: the drop in the device's free memory
(``torch.cuda.mem_get_info``) from just before preparation to after the case. It counts what
the target itself holds whatever allocates it (torch's caching allocator, ONNX Runtime's arena,
TensorRT's engine and context memory, cuDNN/cuBLAS handles and workspaces), and none of the
CUDA context that exists before the probe starts. All three keep what they allocated until the
runner closes (caching allocators, an arena that does not shrink, persistent context memory),
so the reading after the case is the case's peak; a sampling thread is avoided on purpose, as it
would take the GIL from the thread that launches the timed work. The torch allocator's own peak
and NVML's per-process figure are kept beside it where they exist.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class MemoryStats:
    device: str
    peak_rss_delta_bytes: int | None = None  # CPU: peak RSS minus RSS before prepare
    cuda_peak_allocated_bytes: int | None = None  # torch targets: the caching allocator's peak
    cuda_process_used_bytes: int | None = None  # NVML: this process's device memory (context included)
    engine_device_memory_bytes: int | None = None  # TensorRT: activation memory of the engine
    artifact_bytes: int | None = None
    cuda_free_drop_bytes: int | None = None  # every CUDA target: device free memory lost since start

    @property
    def headline_bytes(self) -> int | None:
        """The one number a table shows for this device."""
        if self.device == "cpu":
            return self.peak_rss_delta_bytes
        if self.cuda_free_drop_bytes is not None:  # the one figure measured alike for every target
            return self.cuda_free_drop_bytes
        return self.cuda_peak_allocated_bytes or self.cuda_process_used_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryStats:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


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
    a model prepared after other work (the oracle's float64 pass, an earlier case group) reuses
    retained pages, RSS does not grow, and its memory would be under-reported.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class MemoryProbe:
    """Start before preparing a runner, read after each measured case."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.baseline_rss = 0
        self.baseline_free = 0

    def start(self) -> None:
        release_freed_memory()
        reset_peak_rss()
        self.baseline_rss = current_rss_bytes()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            # Blocks an earlier group of this worker left in torch's cache would be reused
            # unseen by the free-memory figure: hand them back first.
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.baseline_free = int(torch.cuda.mem_get_info()[0])

    def read(
        self, uses_torch_allocator: bool, engine_bytes: int | None = None, artifact_bytes: int | None = None
    ) -> MemoryStats:
        rss = max(0, peak_rss_bytes() - self.baseline_rss)
        if self.device != "cuda":
            return MemoryStats("cpu", peak_rss_delta_bytes=rss, artifact_bytes=artifact_bytes)
        import torch

        torch.cuda.synchronize()
        free_now = int(torch.cuda.mem_get_info()[0])
        return MemoryStats(
            "cuda",
            cuda_free_drop_bytes=max(0, self.baseline_free - free_now),
            peak_rss_delta_bytes=rss,
            cuda_peak_allocated_bytes=int(torch.cuda.max_memory_allocated())
            if uses_torch_allocator
            else None,
            cuda_process_used_bytes=nvml_process_used_bytes(),
            engine_device_memory_bytes=engine_bytes,
            artifact_bytes=artifact_bytes,
        )


def nvml_process_used_bytes() -> int | None:
    """Device memory NVML attributes to this process (None without NVML or in containers that hide it).

    A PID-namespaced container often shows NVML host PIDs, so this is commonly None there; the
    free-memory drop is the figure compared across targets.
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
