"""PyTorch eager: the reference every other target is compared with.

Why the merged layout can lose on CUDA, and what the memory format changes. PyTorch picks a
kernel per convolution in ``_select_conv_backend`` (aten/src/ATen/native/Convolution.cpp, asked
from Python as ``torch._C._select_conv_backend``): a convolution is *depthwise* when the input is
on CUDA, 4-D or 5-D, has as many channels as groups (more than one), and the output channels are a
multiple of them (``ConvParams::is_depthwise``). A depthwise convolution goes to cuDNN only when
``use_cudnn_depthwise`` says so: always when ``cudnn_conv_suggest_memory_format`` of the input or
the weight is channels-last ("always use cudnn_depthwise for channels_last format"), otherwise only
for fp16 4-D inputs; a contiguous 5-D one runs PyTorch's own ``CudaDepthwise3d`` kernel, in fp32
and fp16 alike. The merged first convolution of model and decision fusion over separate inputs,
Conv3d(N -> N·F, groups=N), is exactly that case; every other convolution here has groups=1 or
several input channels per group and goes to cuDNN. Holding the weights in ``channels_last_3d``
(``BuildOptions.memory_format``) makes the weight suggest channels-last, so the depthwise
convolution goes to cuDNN as well; ``conv_backends`` records the choice for each case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccnbench.backends.base import MEMORY_FORMATS, Backend, BuildOptions, Runner, Stopwatch, Target
from ccnbench.errors import CcnbenchError
from ccnbench.models.cast import CastIO
from ccnbench.models.torch_numerics import TORCH_DTYPES, configure_cuda_numerics

TORCH_MEMORY_FORMATS = dict(
    zip(MEMORY_FORMATS, (torch.contiguous_format, torch.channels_last_3d), strict=True)
)

if TYPE_CHECKING:
    from ccnbench.source import ModelSource


def cuda_unavailable_reason() -> str | None:
    """None when torch sees a CUDA device, else why not, in words a user can act on."""
    if torch.cuda.is_available():
        return None
    if not torch.version.cuda:
        return f"no CUDA device: torch {torch.__version__} is a CPU build"
    return "no CUDA device visible to torch (driver missing or CUDA_VISIBLE_DEVICES empty)"


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
    source: ModelSource, target: Target, precision: str, memory_format: str = "contiguous"
) -> tuple[nn.Module, dict[str, Any]]:
    """The source's module on the target's device, computing in ``precision`` behind float32 I/O,
    its 4-D and 5-D weights in ``memory_format``."""
    details: dict[str, Any] = {}
    if target.is_cuda:
        details.update(configure_cuda_numerics(precision))
    dtype = TORCH_DTYPES[precision]
    module = source.module().to(device=target.device_kind, dtype=dtype).eval()
    if memory_format != "contiguous":
        module = module.to(memory_format=TORCH_MEMORY_FORMATS[memory_format])
        details["memory_format"] = memory_format
    if dtype != torch.float32:
        module = CastIO(module, dtype)
    return module, details


def conv_backends(module: nn.Module, inputs: Sequence[Tensor]) -> list[str]:
    """The kernel PyTorch picks for each Conv3d of ``module`` when it runs on ``inputs`` (on the
    module's device), in call order: ``Cudnn``, ``CudaDepthwise3d``, ``Mkldnn``, ... The answer
    of ``torch._C._select_conv_backend`` for the tensors each convolution really receives."""
    picked: list[str] = []

    def ask(conv: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        choice = torch._C._select_conv_backend(
            x, conv.weight, conv.bias, list(conv.stride), list(conv.padding), list(conv.dilation),
            False, [0] * len(conv.stride), conv.groups,
        )  # fmt: skip
        picked.append(str(choice).rpartition(".")[2])

    hooks = [m.register_forward_pre_hook(ask) for m in module.modules() if isinstance(m, nn.Conv3d)]
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return picked


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
        if self.module is None:
            raise CcnbenchError("runner is closed")
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


def prepared_with_first_calls(
    target: Target,
    build: Callable[[torch.cuda.Stream | None], TorchRunner],
    first_calls: Callable[[TorchRunner], None],
    details: dict[str, Any],
) -> TorchRunner:
    """The end of ``prepare`` for targets whose first calls do real work (compiling, loading a
    package): ``build`` makes the runner on its own stream (CUDA) and ``first_calls`` runs it, both
    inside the build timer and waited for on the device, so none of it is charged to warm-up.
    ``details`` are added to the runner's."""
    with Stopwatch() as sw:
        stream = torch.cuda.Stream() if target.is_cuda else None
        runner = build(stream)
        first_calls(runner)
        if stream is not None:
            torch.cuda.synchronize()
    runner.build_seconds = sw.seconds
    runner.details.update(details)
    return runner


class TorchBackend(Backend):
    name = "torch"
    devices = ("cpu", "cuda")
    description = "PyTorch eager under inference_mode"

    memory_formats = MEMORY_FORMATS

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
            module, details = module_for_target(source, target, options.precision, options.memory_format)
            stream = torch.cuda.Stream() if target.is_cuda else None
        if target.is_cuda:  # which convolutions cuDNN runs: the merged layout's speed depends on it
            inputs = [x.to(target.device_kind) for x in source.make_inputs(1)]
            details["conv_backends"] = conv_backends(module, inputs)
        return TorchRunner(
            target, source.output_names, sw.seconds, details, True, module=module, _stream=stream
        )
