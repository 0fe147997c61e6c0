"""What a precision means to PyTorch: its dtype, and on CUDA the numerics that go with it.

Shared by every target that runs or compiles a torch module (eager, torch.compile, AOTInductor
packages), so fp32 means the same strict fp32 in each.
"""

from __future__ import annotations

from typing import Any

import torch

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def configure_cuda_numerics(precision: str) -> dict[str, Any]:
    """fp32 means fp32: TF32 off (cuDNN enables it for convolutions by default). cuDNN autotuning
    on, as ONNX Runtime (EXHAUSTIVE) and TensorRT autotune too; the warm-up absorbs the search."""
    strict = precision == "fp32"
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.benchmark = True
    return {"tf32": not strict, "cudnn_benchmark": True}
