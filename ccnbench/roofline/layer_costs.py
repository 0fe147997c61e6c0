"""FLOPs and bytes of each layer of a module, from one traced forward at the case's batch size.

FLOPs count as torch's ``FlopCounterMode`` and fvcore do: 2 × multiply-accumulates of
convolutions and linear layers (bias, pooling, normalisation and activations count 0), so a
pooling or BatchNorm layer is read by its bytes alone, against the memory roof. Layers of other
types with parameters (a user's own) take ``FlopCounterMode``'s count of their call.

Bytes are the least a layer must move: its parameters and buffers once per forward, plus every
tensor it reads and writes, at the case's element size. Several layers run as one fused unit move
less: the tensors passed between them stay inside the unit (``ModuleCosts.of``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
# Leaves whose arithmetic FlopCounterMode leaves out: a few operations per element.
_NO_FLOPS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm3d,
    nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.MaxPool2d, nn.AvgPool2d,
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Softmax,
    nn.Dropout, nn.Dropout3d, nn.Flatten, nn.Identity,
)  # fmt: skip


@dataclass(frozen=True)
class Traffic:
    """FLOPs and least bytes of one or more layers (one unit of work)."""

    flops: int
    bytes: int

    @property
    def intensity(self) -> float:
        """FLOP per byte: where the unit sits on the roofline's x axis."""
        return self.flops / self.bytes if self.bytes else 0.0


@dataclass
class LayerCost:
    path: str
    kind: str
    flops: int = 0
    weight_bytes: int = 0
    # (tensor key, bytes) of each call's reads and writes; a key is the tensor's identity and
    # version, so an in-place activation's output is a new tensor.
    reads: list[tuple[tuple[int, int], int]] = field(default_factory=list)
    writes: list[tuple[tuple[int, int], int]] = field(default_factory=list)
    calls: int = 0

    @property
    def bytes(self) -> int:
        return self.weight_bytes + sum(b for _, b in self.reads) + sum(b for _, b in self.writes)


@dataclass(frozen=True)
class ModuleCosts:
    """Per-layer costs of one module at one batch size and precision."""

    layers: dict[str, LayerCost]
    batch: int
    precision: str

    def of(self, paths: Iterable[str]) -> Traffic | None:
        """The traffic of ``paths`` run as one unit (None when none of them is a counted layer):
        tensors one of them writes and another reads stay inside the unit."""
        members = [self.layers[p] for p in dict.fromkeys(paths) if p in self.layers]
        if not members:
            return None
        written = {key for m in members for key, _ in m.writes}
        read = {key for m in members for key, _ in m.reads}
        reads = {key: b for m in members for key, b in m.reads if key not in written}
        writes = {key: b for m in members for key, b in m.writes if key not in read}
        weights = sum(m.weight_bytes for m in members)
        return Traffic(sum(m.flops for m in members), weights + sum(reads.values()) + sum(writes.values()))

    def total(self) -> Traffic:
        """The whole forward as the sum of its layers, each moving its own tensors (the
        roofline of a network as a sequence of layers, not one fused kernel)."""
        return Traffic(sum(m.flops for m in self.layers.values()), sum(m.bytes for m in self.layers.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            path: {"kind": m.kind, "flops": m.flops, "bytes": m.bytes, "calls": m.calls}
            for path, m in self.layers.items()
        }


def element_bytes(precision: str) -> int:
    """Bytes per element at ``precision``; an int8 file (``int8-u8``, ``int8-s8``) moves its weights
    and the activations between quantized layers as one byte each."""
    return 1 if precision.startswith("int8") else ELEMENT_BYTES.get(precision, 4)


def analytic_flops(module: nn.Module, inputs: Sequence[Tensor], output: Tensor) -> int | None:
    """2 × MACs of a convolution or linear layer, 0 for the layers FLOP counters skip, None
    for a type this function does not know."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return 2 * output.numel() * per_output
    if isinstance(module, nn.Linear):
        return 2 * output.numel() * module.in_features
    if isinstance(module, _NO_FLOPS) or not any(True for _ in module.parameters(recurse=False)):
        return 0
    return None


def _key(t: Tensor) -> tuple[int, int]:
    return (id(t), t._version)


def _tensors(value: Any) -> list[Tensor]:
    return [t for t in pytree.tree_leaves(value) if isinstance(t, Tensor)]


def trace_costs(module: nn.Module, inputs: Sequence[Tensor], precision: str = "fp32") -> ModuleCosts:
    """Run ``module`` once on ``inputs`` (any batch size) and count each leaf layer's work."""
    from torch.utils.flop_counter import FlopCounterMode

    element = element_bytes(precision)
    layers: dict[str, LayerCost] = {}
    alive: list[Tensor] = []  # keeps every traced tensor alive, so no id is reused mid-trace
    handles = []
    leaves = [(path, m) for path, m in module.named_modules() if not any(True for _ in m.children())]

    def before(path: str, leaf: nn.Module):
        # Inputs are keyed before the call: an in-place layer bumps their version as it runs.
        def record(_: nn.Module, args: tuple[Any, ...]) -> None:
            ins = _tensors(args)
            alive.extend(ins)
            pending[path] = [(_key(t), t.numel() * element) for t in ins if t.is_floating_point()]

        return record

    def after(path: str, leaf: nn.Module):
        def record(_: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            cost = layers.setdefault(path, LayerCost(path, type(leaf).__name__))
            if cost.calls == 0:
                own = [*leaf.parameters(recurse=False), *leaf.buffers(recurse=False)]
                cost.weight_bytes = sum(t.numel() for t in own if t.is_floating_point()) * element
            cost.calls += 1
            outs = _tensors(output)
            alive.extend(outs)
            cost.reads += pending.pop(path, [])
            cost.writes += [(_key(t), t.numel() * element) for t in outs if t.is_floating_point()]
            cost.flops += (analytic_flops(leaf, _tensors(args), outs[0]) or 0) if outs else 0

        return record

    pending: dict[str, list[tuple[tuple[int, int], int]]] = {}
    for path, leaf in leaves:
        if path:
            handles.append(leaf.register_forward_pre_hook(before(path, leaf)))
            handles.append(leaf.register_forward_hook(after(path, leaf)))
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    # Layer types analytic_flops does not know take FlopCounterMode's count of their calls,
    # which it names "<root class>.<path>".
    counts = counter.get_flop_counts()
    root = type(module).__name__
    for path, cost in layers.items():
        if analytic_flops(module.get_submodule(path), [], torch.empty(0)) is None:
            cost.flops = int(sum(counts.get(f"{root}.{path}", {}).values()))
    alive.clear()
    return ModuleCosts(layers, int(inputs[0].shape[0]) if inputs else 0, precision)
