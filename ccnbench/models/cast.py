"""Run a module in one dtype behind float32 inputs and outputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CastIO(nn.Module):
    """float32 in and out around a module that computes in ``dtype``.

    This is how fp16/bf16 are deployed in practice: callers keep float32 tensors and the
    model casts at its boundary. The fp16 ONNX artifact and the torch fp16 targets both do it,
    so their timings include the same casts.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        y = self.module(*(x.to(self.dtype) for x in inputs))
        return tuple(t.float() for t in y) if isinstance(y, (tuple, list)) else y.float()
