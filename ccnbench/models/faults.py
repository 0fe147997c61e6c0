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

The same faults apply to any user module (``--model``): a branch is then an entry of the first
``nn.ModuleList`` (or ``nn.Sequential``) whose first two entries hold tensors of the same names and
shapes (MONAI trunks or members side by side); ``scale_layer`` takes any Conv1d/2d/3d or Linear.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ccnbench.models.fusion import DecisionFusion, EarlyFusion, FusionNet, ModelFusion

SCALE = 1.1  # "off by 10 %"


def fault_names(kept: nn.Module) -> list[str]:
    """Every fault that applies to ``kept`` (a built-in variant or any module): the branch faults
    need two branches."""
    names = ["bn_reset"] + [f"scale_layer:{name}" for name in weight_layers(kept)]
    two = kept.spec.branches >= 2 if isinstance(kept, FusionNet) else branch_list(kept) is not None
    if two:
        names = ["swap_branches", "copy_branch", *names]
    return names


def weight_layers(module: nn.Module) -> list[str]:
    """Names of the convolution and Linear layers, in the order the module defines them."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return [name for name, m in module.named_modules() if isinstance(m, kinds)]


def branch_list(module: nn.Module) -> nn.ModuleList | nn.Sequential | None:
    """A user module's branches: the first ModuleList or Sequential whose first two entries hold
    tensors of the same names and shapes (None when there is none)."""
    for m in module.modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2:
            first, second = m[0].state_dict(), m[1].state_dict()
            if first and {k: v.shape for k, v in first.items()} == {k: v.shape for k, v in second.items()}:
                return m
    return None


def inject(kept: nn.Module, fault: str) -> nn.Module:
    """A copy of ``kept`` with ``fault`` (one of ``fault_names(kept)``) applied."""
    broken = copy.deepcopy(kept)
    kind, _, layer = fault.partition(":")
    with torch.no_grad():
        if kind in ("swap_branches", "copy_branch") and fault in fault_names(broken):
            edit: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] = (
                (lambda a, b: (b, a)) if kind == "swap_branches" else (lambda a, b: (a, a))
            )
            if isinstance(broken, FusionNet):
                _branch_edit(broken, edit)
            else:
                branches = branch_list(broken)
                assert branches is not None  # fault_names lists branch faults only where there are two
                _swap_states(branches[0], branches[1], edit)
        elif kind == "bn_reset":
            for m in broken.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
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
        _swap_states(branches[0], branches[1], edit)
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


def _swap_states(a: nn.Module, b: nn.Module, edit: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
    """Load ``edit(a's tensor, b's tensor)`` into ``a`` and ``b``, name by name."""
    first, second = a.state_dict(), b.state_dict()
    new_first, new_second = {}, {}
    for name in first:
        new_first[name], new_second[name] = (t.clone() for t in edit(first[name], second[name]))
    a.load_state_dict(new_first)
    b.load_state_dict(new_second)
