"""Kept -> merged: fuse N parallel branches into one op per layer, with identical outputs.

How each variant merges (see DESIGN.md):
- shared weights over separate inputs (feature, multitask): fold the branches into the batch,
  (B, N, ...) -> (B·N, ...), run the extractor once, unfold to (B, N·C, ...), which is the
  channel order ``torch.cat(dim=1)`` gives;
- separate weights over separate inputs (model, decision): concatenate the inputs on
  channels and run grouped Conv3d (groups=N) with every BatchNorm widened to N·C channels;
- separate weights over one shared input: the first Conv3d is widened to N·C outputs
  (weights concatenated), later layers are grouped;
- decision fusion: sum_i w_i (W_i f_i + b_i) = [w_1 W_1 ... w_N W_N] [f_1; ...; f_N] + sum_i w_i b_i,
  so the N classifiers and the weighted sum fold into one Linear;
- multitask: both heads become one Linear with classes + 1 outputs, split afterwards.
BatchNorm is per channel, so batch folding is exact in eval mode; in training mode the
batch statistics would pool the branches, which is why merging is a deployment transform.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ccnbench.models.blocks import ExtractorBlock
from ccnbench.models.fusion import (
    DecisionFusion,
    EarlyFusion,
    FeatureFusion,
    FusionNet,
    ModelFusion,
    MultiTask,
)
from ccnbench.models.spec import ModelSpec

JOINS = ("batch", "channels", "single")


class MergedFusion(nn.Module):
    """Any variant with its branches horizontally fused: one op per layer whatever N is.

    ``join`` says how the inputs meet the extractor: ``batch`` folds branches into the batch
    (shared weights), ``channels`` concatenates them on channels (grouped or early fusion),
    ``single`` takes one shared input. ``head`` produces every output at once and is split
    into ``spec.output_sizes``.
    """

    def __init__(self, spec: ModelSpec, join: str, extractor: nn.Sequential, head: nn.Linear) -> None:
        super().__init__()
        if join not in JOINS:
            raise ValueError(f"join must be one of {JOINS}, got {join!r}")
        self.spec = spec
        self.join = join
        self.extractor = extractor
        self.head = head

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if len(inputs) != self.spec.num_inputs:
            raise ValueError(f"{self.spec.label} takes {self.spec.num_inputs} input(s), got {len(inputs)}")
        if self.join == "batch":
            x = torch.stack(inputs, dim=1).flatten(0, 1)  # (B·N, 1, D, H, W)
            features = self.extractor(x).unflatten(0, (-1, self.spec.branches)).flatten(1)
        else:
            x = torch.cat(inputs, dim=1) if self.join == "channels" else inputs[0]
            features = self.extractor(x).flatten(1)
        y = self.head(features)
        if len(self.spec.output_sizes) == 1:
            return y
        return tuple(torch.split(y, list(self.spec.output_sizes), dim=1))


def merge(kept: FusionNet) -> MergedFusion:
    """Build the merged module of ``kept``, carrying every weight and BatchNorm statistic over.

    The result is in the same train/eval mode, dtype and device as ``kept``.
    """
    spec = kept.spec
    reference = next(kept.parameters())
    # New layers are created directly in the kept dtype: building them in float32 and copying
    # float64 weights in would round the weights before the comparison even starts.
    factory = {"device": reference.device, "dtype": reference.dtype}
    if isinstance(kept, EarlyFusion):
        merged = MergedFusion(spec, "channels", copy.deepcopy(kept.extractor), copy.deepcopy(kept.classifier))
    elif isinstance(kept, FeatureFusion):
        merged = MergedFusion(spec, "batch", copy.deepcopy(kept.extractor), copy.deepcopy(kept.classifier))
    elif isinstance(kept, MultiTask):
        head = _stack_linears([kept.classifier, kept.regressor], factory)
        merged = MergedFusion(spec, "batch", copy.deepcopy(kept.trunk), head)
    elif isinstance(kept, ModelFusion):
        extractor = _grouped_extractor(list(kept.extractors), spec, factory)
        merged = MergedFusion(spec, _branch_join(spec), extractor, copy.deepcopy(kept.classifier))
    elif isinstance(kept, DecisionFusion):
        extractor = _grouped_extractor([m.extractor for m in kept.members], spec, factory)
        head = _fold_weighted_classifiers([m.classifier for m in kept.members], kept.weights, factory)
        merged = MergedFusion(spec, _branch_join(spec), extractor, head)
    else:
        raise TypeError(f"cannot merge {type(kept).__name__}: not a ccnbench fusion variant")
    return merged.train(kept.training)


def _branch_join(spec: ModelSpec) -> str:
    return "single" if spec.input_mode == "shared" else "channels"


def _grouped_extractor(
    extractors: list[nn.Sequential], spec: ModelSpec, factory: dict[str, Any]
) -> nn.Sequential:
    """N extractors of identical shape -> one whose convolutions are grouped (or widened)."""
    n = len(extractors)
    blocks = []
    for depth_index, layer in enumerate(zip(*extractors)):
        first = layer[0]
        # A shared single-channel input feeds every branch: widen the first conv instead of grouping.
        widened = depth_index == 0 and spec.input_mode == "shared"
        in_channels = first.conv.in_channels if widened else n * first.conv.in_channels
        block = ExtractorBlock(
            in_channels, n * first.conv.out_channels, first.drop.p, groups=1 if widened else n, **factory
        )
        with torch.no_grad():
            block.conv.weight.copy_(torch.cat([b.conv.weight for b in layer], dim=0))
            _copy_concatenated_norm(block.norm, [b.norm for b in layer])
        block.act.negative_slope = first.act.negative_slope
        block.pool = copy.deepcopy(first.pool)
        blocks.append(block)
    return nn.Sequential(*blocks)


def _copy_concatenated_norm(target: nn.BatchNorm3d, norms: list[nn.BatchNorm3d]) -> None:
    if len({bn.eps for bn in norms}) != 1:
        raise ValueError("cannot merge BatchNorm layers with different eps")
    target.eps = norms[0].eps
    target.momentum = norms[0].momentum
    target.weight.copy_(torch.cat([bn.weight for bn in norms]))
    target.bias.copy_(torch.cat([bn.bias for bn in norms]))
    target.running_mean.copy_(torch.cat([bn.running_mean for bn in norms]))
    target.running_var.copy_(torch.cat([bn.running_var for bn in norms]))
    target.num_batches_tracked.copy_(norms[0].num_batches_tracked)


def _stack_linears(linears: list[nn.Linear], factory: dict[str, Any]) -> nn.Linear:
    """Heads over the same features -> one Linear whose outputs are theirs, in order."""
    out = nn.Linear(linears[0].in_features, sum(lin.out_features for lin in linears), **factory)
    with torch.no_grad():
        out.weight.copy_(torch.cat([lin.weight for lin in linears], dim=0))
        out.bias.copy_(torch.cat([lin.bias for lin in linears]))
    return out


def _fold_weighted_classifiers(
    linears: list[nn.Linear], weights: Tensor, factory: dict[str, Any]
) -> nn.Linear:
    """sum_i w_i (W_i f_i + b_i) as one Linear over the concatenated features [f_1 ... f_N]."""
    first = linears[0]
    out = nn.Linear(len(linears) * first.in_features, first.out_features, **factory)
    with torch.no_grad():
        out.weight.copy_(torch.cat([w * lin.weight for w, lin in zip(weights, linears)], dim=1))
        out.bias.copy_(sum(w * lin.bias for w, lin in zip(weights, linears)))
    return out
