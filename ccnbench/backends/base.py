"""What every backend provides: a target, its availability, and a runner on device tensors.

Building is separate from running. ``Backend.prepare`` does everything expensive (export,
session creation, compilation, engine build) once and records it as build cost; the runner's
``infer`` is then a plain call on tensors already on the target's device, leaving the outputs
there. Timing never lives here: ``ccnbench.measure.timing`` times every runner the same way, choosing
CUDA events or a host clock from ``Runner.is_cuda`` alone.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccnbench.errors import UsageError

if TYPE_CHECKING:
    import torch

    from ccnbench.source import ModelSource

# Where a target's tensors live: ONNX Runtime's TensorRT provider runs on the CUDA device.
DEVICE_KINDS = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}
# How a PyTorch target stores its convolution weights. channels_last_3d sends every Conv3d to
# cuDNN on CUDA, the merged layout's depthwise first convolution included (see torch_eager.py).
MEMORY_FORMATS = ("contiguous", "channels_last_3d")


@dataclass(frozen=True, order=True)
class Target:
    """A backend on a device, written ``backend:device`` (``ort:cuda``, ``tensorrt:cuda``)."""

    backend: str
    device: str

    @classmethod
    def parse(cls, text: str) -> Target:
        backend, sep, device = text.strip().partition(":")
        if not sep or not backend or not device:
            raise UsageError(f"target {text!r} is not of the form backend:device (e.g. ort:cpu)")
        return cls(backend, device)

    @property
    def device_kind(self) -> str:
        """'cpu' or 'cuda': where inputs are staged and outputs are left."""
        return DEVICE_KINDS.get(self.device, self.device)

    @property
    def is_cuda(self) -> bool:
        return self.device_kind == "cuda"

    @property
    def reference(self) -> Target:
        """Eager PyTorch on the same kind of device: what a user would run without ccnbench."""
        return Target("torch", self.device_kind)

    @property
    def is_reference(self) -> bool:
        return self == self.reference

    def __str__(self) -> str:
        return f"{self.backend}:{self.device}"


@dataclass(frozen=True)
class BuildOptions:
    """Everything a backend may need to prepare a runner. Backends ignore what is not theirs."""

    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = (1,)
    threads: int = 1
    artifacts_dir: Path = Path("artifacts")
    opset: int = 18
    io: str = "fp32"
    # ONNX Runtime CUDA: cuDNN's algorithm search for convolutions.
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    # torch.compile: one graph for every batch size instead of one per size (less compile time).
    dynamic_batch: bool = False
    # PyTorch targets: the memory format of the module's weights (see MEMORY_FORMATS).
    memory_format: str = "contiguous"
    # TensorRT (native and through ONNX Runtime).
    workspace_mib: int = 4096
    builder_optimization_level: int = 3
    # The runtime's own per-layer profiler on (``ccnbench explain``): ONNX Runtime's session
    # profiling, OpenVINO's PERF_COUNT. Never set for a timed case: it slows the runtime.
    profiling: bool = False
    # int8: grade on this .npz of inputs (``--eval-inputs``) instead of the seeded evaluation set.
    eval_inputs: str | None = None

    def __post_init__(self) -> None:
        if self.memory_format not in MEMORY_FORMATS:
            raise UsageError(
                f"unknown memory format {self.memory_format!r}; choose from {', '.join(MEMORY_FORMATS)}"
            )


@dataclass
class Runner(abc.ABC):
    """A prepared model on one target. Use as a context manager; ``close`` frees everything.

    ``infer`` takes inputs already on ``device`` (float32 unless the artifact's I/O is fp16)
    and returns the outputs on the same device, in ``output_names`` order; they may be buffers
    the runner reuses, valid until its next call. CUDA runners
    enqueue their work on ``stream`` (a non-default stream) so events recorded there time it;
    the caller synchronises with that stream before reading the outputs.
    """

    target: Target
    output_names: tuple[str, ...]
    build_seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    # torch's caching allocator holds this runner's device memory (read its peak, not NVML's).
    uses_torch_allocator: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.target.is_cuda

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device(self.target.device_kind)

    @property
    def stream(self) -> torch.cuda.Stream | None:
        """The CUDA stream the runner enqueues on; None on the CPU."""
        return None

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype the inputs must be staged in (float32, or float16 for an fp16-I/O artifact)."""
        import torch

        return torch.float32

    @abc.abstractmethod
    def infer(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]: ...

    def close(self) -> None:  # noqa: B027 - most runners hold nothing beyond Python references
        """Free sessions, engines and device memory. Safe to call twice."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(abc.ABC):
    """One framework. Its heavy library is imported inside these methods, never at module level."""

    name: str = ""
    devices: tuple[str, ...] = ()
    # Whether the runner is built from an ONNX artifact (else from the nn.Module).
    needs_onnx: bool = False
    # The file the runner loads, built once in the sweep's parent: "onnx", "pt2", or None when the
    # runner is built from the nn.Module. None here with ``needs_onnx`` set means "onnx".
    artifact_format: str | None = None
    # What a user deploys when it is not the artifact itself (TensorRT: the engine built from it).
    ships_as: str | None = None
    # A hardware vendor's own runtime (OpenVINO: Intel; TensorRT: NVIDIA, whose engine is also bound
    # to one GPU and TensorRT version). In a tie ``recommend`` ships a vendor-neutral runtime first.
    vendor_runtime: bool = False
    # Whether its runner may be timed in one process beside other formats of the same model (a
    # contest, see ccnbench/run/contest.py). False for a crash-prone backend: it then gets its own worker.
    shares_process: bool = True
    # The memory formats its runner can hold the weights in (MEMORY_FORMATS); only PyTorch's
    # own targets have a choice, every file format fixes its own layout.
    memory_formats: tuple[str, ...] = ("contiguous",)
    description: str = ""

    @property
    def file_format(self) -> str | None:
        return self.artifact_format or ("onnx" if self.needs_onnx else None)

    @property
    def shipped(self) -> str | None:
        """What a user ships for this target, or None when it needs the model's Python code at
        run time (eager, torch.compile). ``recommend`` labels and filters its answers by this."""
        return self.ships_as or {"onnx": "ONNX file", "pt2": ".pt2 package"}.get(self.file_format or "")

    def artifact(self, source: ModelSource, target: Target, options: BuildOptions) -> Any:
        """Build or reuse the file this target loads (None: it runs the module). The sweep calls
        this in its parent before workers start, so each file is built once and workers only read
        it; ``prepare`` calls it again and finds it cached."""
        if self.file_format == "onnx":
            return source.artifact(options.precision, options.io, options.opset, options.artifacts_dir)
        return None

    def precisions(self, device: str) -> tuple[str, ...]:
        return ("fp32", "fp16")

    def targets(self) -> list[Target]:
        return [Target(self.name, d) for d in self.devices]

    def warm(self, device: str, options: BuildOptions) -> None:  # noqa: B027 - most need nothing
        """Pay this runtime's one-time costs in this process (imports, CUDA context, library
        handles, thread pools) before any memory baseline or build timer starts, so that no
        member of a contest is charged for them because it happened to go first (memory.py)."""

    @abc.abstractmethod
    def availability(self, device: str) -> str | None:
        """None when ``backend:device`` can run here, else the reason, phrased so a user can act."""

    @abc.abstractmethod
    def prepare(self, source: ModelSource, target: Target, options: BuildOptions) -> Runner:
        """Build the runner (export, session, compilation, engine): the build cost."""


class Stopwatch:
    """Build-cost timer: ``with Stopwatch() as sw: ...; sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
