"""Merged forms that train like the kept ones, and the way back from merged weights to a kept state_dict.

The deployment merge (``ccnbench.models.merge``) is exact in eval mode. In training mode it is
exact only where every BatchNorm channel still sees one branch and every parameter of the kept
model is still a parameter of the merged one:

- **early**: nothing to merge; the merged module is the kept one.
- **model**: grouped convolutions and BatchNorm widened to N·C channels, each channel one
  branch's: batch statistics, running statistics and gradients are the kept model's.
- **feature, multitask**: the branches are folded into the batch, so a training-mode BatchNorm
  pools the N branches' statistics, where the kept shared BatchNorm normalises each branch on its
  own and updates its running statistics N times per step. :class:`BranchBatchNorm3d` restores
  that (statistics per branch, the N running-stat updates in closed form), which makes the
  batch-folded form training-equivalent. Multitask's stacked head is exact: its rows are the two
  heads' rows.
- **decision**: the merge folds the N classifiers and the decision weights into one Linear, so
  per-member losses cannot be formed, a gradient step on ``w_i·W_i`` is not ``w_i`` times a step
  on ``W_i``, and the summed bias cannot be split back. :class:`UnfoldedDecision` keeps the grouped
  extractor but the N heads unfolded (one batched matmul), which trains like the kept model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ccnbench.errors import CcnbenchError
from ccnbench.models import build_kept, merge
from ccnbench.models.fusion import FusionNet
from ccnbench.models.spec import ModelSpec


@dataclass(frozen=True)
class Equivalence:
    """Whether the deployment merge of a variant trains like its kept form, and what does if not."""

    variant: str
    deployment_merge: bool  # the merge ccnbench exports is itself training-equivalent
    training_form: str  # the merged form used for training (possibly the deployment merge)
    invertible: bool  # deployment-merged weights convert back to a kept state_dict
    why: str


EQUIVALENCE: dict[str, Equivalence] = {
    e.variant: e
    for e in (
        Equivalence("early", True, "merged (identical to kept)", True, "no branches: the merge is the kept module"),
        Equivalence(
            "feature", False, "batch-folded, per-branch BatchNorm", True,
            "batch folding pools the N branches' BatchNorm statistics; the kept shared BatchNorm "
            "normalises each branch alone and updates its running statistics N times per step",
        ),
        Equivalence(
            "model", True, "merged (grouped convolutions)", True,
            "grouped convolutions; each widened BatchNorm channel belongs to one branch",
        ),
        Equivalence(
            "decision", False, "grouped extractor, heads unfolded", False,
            "the N classifiers and the weights fold into one Linear: no per-member loss, a step on "
            "w_i·W_i is not a step on W_i, and the summed bias cannot be split back",
        ),
        Equivalence(
            "multitask", False, "batch-folded, per-branch BatchNorm", True,
            "as feature fusion (shared trunk folded into the batch); the stacked head is exact",
        ),
    )
}  # fmt: skip


class BranchBatchNorm3d(nn.BatchNorm3d):
    """A shared BatchNorm over N branches folded into the batch, ``(B·N, C, ...)`` in (b, n) order,
    that in training normalises each branch with its own statistics, as N separate calls of one
    BatchNorm would, and applies those calls' N running-stat updates (in branch order).

    Parameter and buffer names are those of ``nn.BatchNorm3d``, so its state_dict is the kept one.
    In eval mode it is a plain BatchNorm3d.
    """

    def __init__(self, num_features: int, branches: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        self.branches = branches

    @classmethod
    def from_norm(cls, norm: nn.BatchNorm3d, branches: int) -> BranchBatchNorm3d:
        if norm.momentum is None:
            raise CcnbenchError("a cumulative-average BatchNorm (momentum=None) has no per-branch form")
        out = cls(norm.num_features, branches, eps=norm.eps, momentum=norm.momentum)
        out = out.to(device=norm.weight.device, dtype=norm.weight.dtype)
        out.load_state_dict(norm.state_dict())
        return out.train(norm.training)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        n, c = self.branches, self.num_features
        # (B·N, C, ...) in (b, n) order is (B, N·C, ...) with channel n·C + c: a view, and then one
        # fused batch_norm call gives every branch its own statistics.
        folded = x.reshape(x.shape[0] // n, n * c, *x.shape[2:])
        mean, var = self.running_mean.repeat(n), self.running_var.repeat(n)
        y = F.batch_norm(
            folded, mean, var, self.weight.repeat(n), self.bias.repeat(n), True, self.momentum, self.eps
        )
        with torch.no_grad():
            self.running_mean.copy_(self._sequential_update(self.running_mean, mean.view(n, c)))
            self.running_var.copy_(self._sequential_update(self.running_var, var.view(n, c)))
            self.num_batches_tracked.add_(n)
        return y.reshape(x.shape)

    def _sequential_update(self, start: Tensor, once: Tensor) -> Tensor:
        """N updates r <- (1-m) r + m s_i in branch order, from ``once[i] = (1-m) start + m s_i``
        (each branch's update applied to ``start`` alone): (1-m)^N start + sum_i (1-m)^(N-1-i) m s_i."""
        keep = 1.0 - float(self.momentum)  # type: ignore[arg-type]
        n = self.branches
        out = keep**n * start
        for i in range(n):
            out = out + keep ** (n - 1 - i) * (once[i] - keep * start)
        return out


class UnfoldedDecision(nn.Module):
    """Decision fusion with the grouped extractor of the merge but the N member heads kept apart
    (one batched matmul), so each member's logits, and a loss per member, exist in training."""

    def __init__(
        self, spec: ModelSpec, join: str, extractor: nn.Sequential, heads: list[nn.Linear], weights: Tensor
    ) -> None:
        super().__init__()
        self.spec = spec
        self.join = join
        self.extractor = extractor
        self.heads_weight = nn.Parameter(torch.stack([h.weight.detach() for h in heads]).clone())
        self.heads_bias = nn.Parameter(torch.stack([h.bias.detach() for h in heads]).clone())
        # The kept model's buffer as it is (built in float32, then cast), not the spec's exact fractions.
        self.register_buffer("weights", weights.detach().clone())

    def member_logits(self, *inputs: Tensor) -> Tensor:
        """(B, N, classes): each member's logits."""
        x = torch.cat(inputs, dim=1) if self.join == "channels" else inputs[0]
        # Channel-major flatten: branch n's features are one contiguous block of the row.
        features = self.extractor(x).flatten(1).unflatten(1, (self.spec.branches, -1))
        return torch.einsum("bnf,nkf->bnk", features, self.heads_weight) + self.heads_bias

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.member_logits(*inputs).transpose(1, 2) @ self.weights


def training_form(kept: FusionNet) -> nn.Module:
    """The training-equivalent merged form of ``kept`` (same dtype, device and mode)."""
    merged = merge(kept)
    variant, n = kept.spec.variant, kept.spec.branches
    if variant in ("feature", "multitask") and n > 1:
        for block in merged.extractor:
            block.norm = BranchBatchNorm3d.from_norm(block.norm, n)
    elif variant == "decision":
        heads = [m.classifier for m in kept.members]  # type: ignore[attr-defined]
        weights = kept.weights  # type: ignore[attr-defined]
        return UnfoldedDecision(kept.spec, merged.join, merged.extractor, heads, weights).train(kept.training)
    return merged


def kept_state_dict(form: nn.Module, spec: ModelSpec) -> dict[str, Tensor]:
    """The kept-layout state_dict whose module computes what ``form`` (a deployment merge of
    ``spec`` or its :func:`training_form`) computes. Raises CcnbenchError where the merge is not
    invertible (a folded decision head)."""
    reference = next(form.parameters())
    kept = build_kept(spec).to(device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        if spec.variant == "early":
            _load(kept.extractor, form.extractor)
            _load(kept.classifier, form.head)
        elif spec.variant in ("feature", "multitask"):
            _load(kept.extractor if spec.variant == "feature" else kept.trunk, form.extractor)
            _split_heads(kept, form.head, spec)
        elif spec.variant == "model":
            _split_extractor([e for e in kept.extractors], form.extractor)
            _load(kept.classifier, form.head)
        elif isinstance(form, UnfoldedDecision):
            _split_extractor([m.extractor for m in kept.members], form.extractor)
            for i, member in enumerate(kept.members):
                member.classifier.weight.copy_(form.heads_weight[i])
                member.classifier.bias.copy_(form.heads_bias[i])
        else:
            raise CcnbenchError(f"{spec.label}: {EQUIVALENCE['decision'].why}, so it is not invertible")
    return {k: v.detach().clone() for k, v in kept.state_dict().items()}


def _load(target: nn.Module, source: nn.Module) -> None:
    target.load_state_dict(source.state_dict())


def _split_heads(kept: nn.Module, head: nn.Linear, spec: ModelSpec) -> None:
    if spec.variant == "feature":
        _load(kept.classifier, head)
        return
    k = spec.classes
    kept.classifier.weight.copy_(head.weight[:k])
    kept.classifier.bias.copy_(head.bias[:k])
    kept.regressor.weight.copy_(head.weight[k:])
    kept.regressor.bias.copy_(head.bias[k:])


def _split_extractor(extractors: list[nn.Module], merged: nn.Sequential) -> None:
    """Grouped (or widened) blocks -> the N branches' blocks: every tensor split on its first axis."""
    n = len(extractors)
    for depth, block in enumerate(merged):
        parts = [e[depth] for e in extractors]
        for name, tensor in block.state_dict().items():
            # A count is each branch's count; every other tensor is the branches' stacked on axis 0.
            counter = name.endswith("num_batches_tracked")
            chunks = [tensor] * n if counter else list(tensor.chunk(n, dim=0))
            for part, chunk in zip(parts, chunks):
                part.state_dict()[name].copy_(chunk)
