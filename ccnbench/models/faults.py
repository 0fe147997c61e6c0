"""Deliberate export bugs: copies of a kept model with the mistakes exports really make.

Each fault takes a kept module and returns a broken copy; the original is left alone. They
exist to measure how far each mistake moves the outputs, so the agreement tolerances can be set
between the error of correct exports and the error of these bugs (``scripts/fp16_evidence.py``),
and to test that the check fails every one of them.

- ``swap_branches``: branches 0 and 1 exchange their weights (a wrong order when stacking or
  splitting per-branch weights);
- ``copy_branch``: branch 1 is given branch 0's weights (one state dict loaded twice);
- ``bn_reset``: every BatchNorm's running statistics back to mean 0, variance 1 (buffers not
  carried into the export);
- ``scale_layer:<name>``: one Conv3d or Linear weight off by 10 % (a stale or mis-scaled tensor).

"Branch" follows the variant: the per-branch extractor (model fusion) or member (decision);
for early fusion the input channel of the first convolution that belongs to the branch; for
feature and multitask fusion, whose branches share weights, the block of classifier columns
that reads the branch's features.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ccnbench.models.fusion import DecisionFusion, EarlyFusion, FusionNet, ModelFusion

SCALE = 1.1  # "off by 10 %"


def fault_names(kept: FusionNet) -> list[str]:
    """Every fault that applies to ``kept``: the branch faults need two branches."""
    names = ["bn_reset"] + [f"scale_layer:{name}" for name in weight_layers(kept)]
    if kept.spec.branches >= 2:
        names = ["swap_branches", "copy_branch", *names]
    return names


def weight_layers(module: nn.Module) -> list[str]:
    """Names of the Conv3d and Linear layers, in the order the module defines them."""
    return [name for name, m in module.named_modules() if isinstance(m, (nn.Conv3d, nn.Linear))]


def inject(kept: FusionNet, fault: str) -> FusionNet:
    """A copy of ``kept`` with ``fault`` (one of ``fault_names(kept)``) applied."""
    broken = copy.deepcopy(kept)
    kind, _, layer = fault.partition(":")
    with torch.no_grad():
        if kind == "swap_branches":
            _branch_edit(broken, lambda a, b: (b, a))
        elif kind == "copy_branch":
            _branch_edit(broken, lambda a, b: (a, a))
        elif kind == "bn_reset":
            for m in broken.modules():
                if isinstance(m, nn.BatchNorm3d):
                    m.running_mean.zero_()
                    m.running_var.fill_(1.0)
        elif kind == "scale_layer" and layer in weight_layers(broken):
            broken.get_submodule(layer).weight.mul_(SCALE)
        else:
            raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(fault_names(kept))}")
    return broken


def _branch_edit(model: FusionNet, edit: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
    """Replace branch 0's and branch 1's weights (a, b) by ``edit(a, b)``."""
    if isinstance(model, (ModelFusion, DecisionFusion)):
        branches = model.extractors if isinstance(model, ModelFusion) else model.members
        first, second = branches[0].state_dict(), branches[1].state_dict()
        new_first, new_second = {}, {}
        for name in first:
            new_first[name], new_second[name] = (t.clone() for t in edit(first[name], second[name]))
        branches[0].load_state_dict(new_first)
        branches[1].load_state_dict(new_second)
        return
    if isinstance(model, EarlyFusion):
        weight = model.extractor[0].conv.weight  # (filters, branches, k, k, k)
        a, b = (t.clone() for t in edit(weight[:, 0], weight[:, 1]))
        weight[:, 0], weight[:, 1] = a, b
        return
    # feature and multitask: shared weights; the branch owns a block of classifier columns.
    size = model.spec.features_per_extractor
    for head in [m for m in model.modules() if isinstance(m, nn.Linear)]:
        w = head.weight
        a, b = (t.clone() for t in edit(w[:, :size], w[:, size : 2 * size]))
        w[:, :size], w[:, size : 2 * size] = a, b
