"""Process-wide settings that runners set for themselves, captured and re-applied per member.

Members of a contest share one process, and some of what a runner configures is not its own but
the process's: PyTorch's intra-op thread count (eager, compiled and AOTInductor code all use it),
TF32 for cuDNN convolutions and cuBLAS matmuls, and cuDNN autotuning. A runner prepared later
would otherwise leave its choice in place for every member timed after it. A contest reads
the settings right after each member is prepared (``ProcessSettings.read``), runs every block of
that member inside ``applied(settings)``, and restores what the process had before the contest.
Sessions with their own thread pools (ONNX Runtime, OpenVINO) carry their settings themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ProcessSettings:
    torch_threads: int
    cudnn_tf32: bool
    matmul_tf32: bool
    cudnn_benchmark: bool

    @classmethod
    def read(cls) -> ProcessSettings:
        return cls(
            torch_threads=torch.get_num_threads(),
            cudnn_tf32=bool(torch.backends.cudnn.allow_tf32),
            matmul_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
            cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        )

    def apply(self) -> None:
        """Make these the process's settings. Only what differs is set: changing the thread
        count rebuilds the OpenMP pool, which members with the same count must not pay for."""
        if torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        if torch.backends.cudnn.allow_tf32 != self.cudnn_tf32:
            torch.backends.cudnn.allow_tf32 = self.cudnn_tf32
        if torch.backends.cuda.matmul.allow_tf32 != self.matmul_tf32:
            torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32
        if torch.backends.cudnn.benchmark != self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def applied(settings: ProcessSettings) -> Iterator[None]:
    """Run the body with ``settings`` in force, then put back what was there before."""
    before = ProcessSettings.read()
    settings.apply()
    try:
        yield
    finally:
        before.apply()
