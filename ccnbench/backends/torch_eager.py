"""PyTorch eager: the reference every other target is compared with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccnbench.backends.base import Backend, BuildOptions, Runner, Stopwatch, Target
from ccnbench.models.cast import CastIO
from ccnbench.source import ModelSource

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cuda_unavailable_reason() -> str | None:
    """None when torch sees a CUDA device, else why not, in words a user can act on."""
    if torch.cuda.is_available():
        return None
    if not torch.version.cuda:
        return f"no CUDA device: torch {torch.__version__} is a CPU build"
    return "no CUDA device visible to torch (driver missing or CUDA_VISIBLE_DEVICES empty)"


def configure_cuda_numerics(precision: str) -> dict[str, Any]:
    """fp32 means fp32: TF32 off (cuDNN enables it for convolutions by default). cuDNN autotuning
    on, as ONNX Runtime (EXHAUSTIVE) and TensorRT autotune too; the warm-up absorbs the search."""
    strict = precision == "fp32"
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.benchmark = True
    return {"tf32": not strict, "cudnn_benchmark": True}


def warm_torch(device_kind: str, threads: int) -> None:
    """torch's one-time costs: the OpenMP pool at the case's thread count, oneDNN/MKL on the CPU;
    on CUDA the context, the cuDNN and cuBLAS handles and the kernels of the ops ccnbench's
    models use (plain and grouped 3D convolutions, pooling, BatchNorm, LeakyReLU, Linear),
    in fp32 and fp16, with cuDNN's autotuning on as the members have it."""
    torch.set_num_threads(threads)
    cuda = device_kind == "cuda"
    if cuda:
        torch.cuda.init()
        torch.backends.cudnn.benchmark = True
    dtypes = (torch.float32, torch.float16) if cuda else (torch.float32,)
    with torch.inference_mode():
        for dtype in dtypes:
            x = torch.randn(2, 4, 6, 6, 6, device=device_kind, dtype=dtype)
            y = F.conv3d(x, torch.randn(8, 4, 3, 3, 3, device=device_kind, dtype=dtype))
            y = y + F.conv3d(x, torch.randn(8, 2, 3, 3, 3, device=device_kind, dtype=dtype), groups=2)
            y = F.max_pool3d(y, 2, 1)
            y = F.batch_norm(y, torch.zeros(8, device=device_kind, dtype=dtype),
                             torch.ones(8, device=device_kind, dtype=dtype), training=False)  # fmt: skip
            y = torch.cat([F.leaky_relu(y), y], dim=1).flatten(1)
            F.linear(y, torch.randn(3, y.shape[1], device=device_kind, dtype=dtype))
    if cuda:
        torch.cuda.synchronize()


def module_for_target(
    source: ModelSource, target: Target, precision: str
) -> tuple[nn.Module, dict[str, Any]]:
    """The source's module on the target's device, computing in ``precision`` behind float32 I/O."""
    details: dict[str, Any] = {}
    if target.is_cuda:
        details.update(configure_cuda_numerics(precision))
    dtype = TORCH_DTYPES[precision]
    module = source.module().to(device=target.device_kind, dtype=dtype).eval()
    if dtype != torch.float32:
        module = CastIO(module, dtype)
    return module, details


def as_tuple(y: Any) -> tuple[Tensor, ...]:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


@dataclass
class TorchRunner(Runner):
    """Calls a module under inference_mode; on CUDA, on its own non-default stream."""

    module: nn.Module | None = None
    _stream: Any = None

    @property
    def stream(self) -> torch.cuda.Stream | None:
        return self._stream

    def infer(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        assert self.module is not None, "runner is closed"
        with torch.inference_mode():
            if self._stream is None:
                return as_tuple(self.module(*inputs))
            # The inputs were produced on the caller's stream; order our work after it.
            self._stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._stream):
                return as_tuple(self.module(*inputs))

    def close(self) -> None:
        self.module = None
        if self._stream is not None:
            self._stream = None
            torch.cuda.empty_cache()


class TorchBackend(Backend):
    name = "torch"
    devices = ("cpu", "cuda")
    description = "PyTorch eager under inference_mode"

    def precisions(self, device: str) -> tuple[str, ...]:
        return ("fp32", "fp16", "bf16")

    def availability(self, device: str) -> str | None:
        if device == "cuda":
            return cuda_unavailable_reason()
        return None

    def warm(self, device: str, options: BuildOptions) -> None:
        warm_torch(Target(self.name, device).device_kind, options.threads)

    def prepare(self, source: ModelSource, target: Target, options: BuildOptions) -> Runner:
        torch.set_num_threads(options.threads)
        with Stopwatch() as sw:
            module, details = module_for_target(source, target, options.precision)
            stream = torch.cuda.Stream() if target.is_cuda else None
        return TorchRunner(
            target, source.output_names, sw.seconds, details, True, module=module, _stream=stream
        )
