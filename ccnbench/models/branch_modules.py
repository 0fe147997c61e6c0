"""The rewrites of ``graph_merge`` as modules: the rewritten graph calls them where the user's calls were.

``BatchFolded`` (rule 1, shared weights) runs one submodule once on its inputs folded into the
batch; ``StackedBranches`` (rule 2, stacked weights) runs one branch whose weighted layers hold
every branch's weights (``StackedLayer``). ``FoldedStack`` and ``FoldedCall`` are the same two on
inputs already folded into the batch, ``PackedStack`` on branches side by side in channels, for
branches merged in part (``graph_joint``).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree


class BatchFolded(nn.Module):
    """Rule 1: one call of ``module`` on k same-shaped inputs folded into the batch, then unfolded."""

    def __init__(self, module: nn.Module, calls: int) -> None:
        super().__init__()
        self.module = module
        self.calls = calls

    def forward(self, *inputs: Tensor) -> tuple[Any, ...]:
        y = self.module(torch.stack(inputs, dim=1).flatten(0, 1))
        # (B·k, ...) -> (B, k, ...): -1 keeps the batch dynamic for export.
        unfolded = pytree.tree_map(lambda t: t.unflatten(0, (-1, self.calls)), y)
        return tuple(pytree.tree_map(lambda t, i=i: t[:, i], unfolded) for i in range(self.calls))


class StackedBranches(nn.Module):
    """Rule 2: k identical branches run as one, their weighted layers stacked.

    The branches' inputs are folded into the batch, sample-major, ``(B, k, ...) -> (B·k, ...)``:
    everything without weights (activations, pooling, ``view(x.size(0), -1)``, residual adds,
    ``torch.cat(dim=1)``) treats each row as its own sample and so computes every branch at
    once, unchanged. Each layer with weights sees its input as the view ``(B, k·C, ...)`` (no
    copy: sample-major folding puts a sample's k branches next to each other) and runs as one
    grouped layer over the k branches' weights (``torch.func.stack_module_state`` order):
    ``Conv`` with k times the groups, ``BatchNorm`` over k·C channels, ``Linear`` as one batched
    MatMul. Layers with weights of other kinds make the constructor raise ``Unsupported``.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.calls = len(modules)
        branch = copy.deepcopy(modules[0])
        for name, layer in list(branch.named_modules()):
            if not _own_tensors(layer):
                continue
            peers = [m.get_submodule(name) for m in modules]
            stacked = _stacked_layer(peers, name or type(layer).__name__)
            if name:
                replace_submodule(branch, name, stacked)
            else:
                branch = stacked
        self.branch = branch

    def forward(self, *inputs: Tensor) -> tuple[Any, ...]:
        y = self.branch(torch.stack(inputs, dim=1).flatten(0, 1))
        unfolded = pytree.tree_map(lambda t: t.unflatten(0, (-1, self.calls)), y)
        return tuple(pytree.tree_map(lambda t, i=i: t[:, i], unfolded) for i in range(self.calls))


class FoldedStack(StackedBranches):
    """``StackedBranches`` called on branches already folded into the batch, ``(B·k, ...)``, and
    returning them folded: a partly merged run of branches (``graph_joint``) folds them once for a
    run of merged layers instead of around each one."""

    @classmethod
    def of(cls, stacked: StackedBranches) -> FoldedStack:
        """The same stacked branch (its weights shared, not copied) in the folded form."""
        folded = cls.__new__(cls)
        nn.Module.__init__(folded)
        folded.calls = stacked.calls
        folded.branch = stacked.branch
        return folded

    def forward(self, x: Tensor) -> Any:  # type: ignore[override]
        return self.branch(x)


class PackedStack(StackedBranches):
    """``StackedBranches`` on branches side by side in channels, ``(B, k·C, ...)``, and returning
    them so: each Conv is its grouped Conv and each BatchNorm its k·C-channel BatchNorm as they
    are, with no reshape between layers (a runtime that keeps activations in a blocked layout
    would reorder around each reshape). Layers without weights must act per channel (activations,
    pooling, adds): ``graph_merge``'s check on the example inputs holds it to that."""

    @classmethod
    def of(cls, stacked: StackedBranches) -> PackedStack:
        """The same stacked branch (its weights shared, not copied) in the packed form."""
        if any(isinstance(m, StackedLayer) and m.kind == "linear" for m in stacked.branch.modules()):
            raise Unsupported("a Linear has no packed form here (its features are the branches' channels)")
        memo = {id(t): t for t in itertools.chain(stacked.branch.parameters(), stacked.branch.buffers())}
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.calls = stacked.calls
        packed.branch = copy.deepcopy(stacked.branch, memo)
        for m in packed.branch.modules():
            if isinstance(m, StackedLayer):
                m.packed = True
        return packed

    def forward(self, x: Tensor) -> Any:  # type: ignore[override]
        return self.branch(x)


class FoldedCall(BatchFolded):
    """A layer without weights that k branches each call with the same settings, called once on
    the branches folded together: into the batch, ``(B·k, ...)``, or side by side in channels,
    ``(B, k·C, ...)`` (``graph_joint``'s fold-once forms)."""

    def forward(self, *inputs: Any) -> Any:  # type: ignore[override]
        return self.module(*inputs)


class Unsupported(Exception):
    """A branch holds a layer with weights that has no stacked form; the message says which."""


def _own_tensors(module: nn.Module) -> bool:
    return any(t is not None for t in itertools.chain(module._parameters.values(), module._buffers.values()))


class StackedLayer(nn.Module):
    """k layers as one grouped layer over the sample-major folded batch (see StackedBranches), or,
    ``packed``, over the branches side by side in channels, ``(B, k·C, ...)``, as they are."""

    def __init__(self, layer: nn.Module, calls: int, kind: str) -> None:
        super().__init__()
        self.layer = layer
        self.calls = calls
        self.kind = kind
        self.packed = False

    def forward(self, x: Tensor) -> Tensor:
        if self.packed:
            return self.layer(x)
        if self.kind == "linear":
            # (B·k, ..., F) -> (B, k, ..., 1, F) @ (k, 1.., F, O): one MatMul for every branch.
            folded = x.unflatten(0, (-1, self.calls)).unsqueeze(-2)
            ones = [1] * (x.dim() - 2)
            weight = self.layer.weight.transpose(1, 2)
            y = (folded @ weight.reshape(self.calls, *ones, *weight.shape[1:])).squeeze(-2)
            if self.layer.bias is not None:
                y = y + self.layer.bias.reshape(self.calls, *ones, -1)
            return y.flatten(0, 1)
        # Conv and BatchNorm: (B·k, C, ...) viewed as (B, k·C, ...) and back.
        packed = x.unflatten(0, (-1, self.calls)).flatten(1, 2)
        return self.layer(packed).unflatten(1, (self.calls, -1)).flatten(0, 1)


class _StackedLinearWeights(nn.Module):
    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)


def _stacked_layer(peers: list[nn.Module], name: str) -> StackedLayer:
    first, k = peers[0], len(peers)
    params, buffers = torch.func.stack_module_state(peers)
    params = {n: p.detach() for n, p in params.items()}
    if type(first) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and first.padding_mode == "zeros":
        conv = copy.deepcopy(first)
        conv.in_channels, conv.out_channels, conv.groups = (
            k * first.in_channels,
            k * first.out_channels,
            k * first.groups,
        )
        conv.weight = nn.Parameter(params["weight"].flatten(0, 1), requires_grad=False)
        if first.bias is not None:
            conv.bias = nn.Parameter(params["bias"].flatten(), requires_grad=False)
        return StackedLayer(conv, k, "conv")
    if type(first) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        norm = copy.deepcopy(first)
        norm.num_features = k * first.num_features
        for n, value in params.items():
            setattr(norm, n, nn.Parameter(value.flatten(), requires_grad=False))
        for n, value in buffers.items():
            # num_batches_tracked is one counter per layer, not per channel.
            setattr(norm, n, value[0] if value.dim() == 1 else value.flatten())
        return StackedLayer(norm, k, "norm")
    if type(first) is nn.Linear:
        return StackedLayer(_StackedLinearWeights(params["weight"], params.get("bias")), k, "linear")
    raise Unsupported(
        f"{name} is a {type(first).__name__} with weights, which has no stacked form here "
        "(stacked: Conv1d/2d/3d, BatchNorm1d/2d/3d, Linear)"
    )


def replace_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, attr = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)
