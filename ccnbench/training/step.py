"""One optimisation step as these networks are trained, and the check that a merged form's step is the kept one's.

Losses: cross-entropy on the logits; multitask adds the regression head's mean squared error;
decision fusion is trained either on its fused logits (``fused``) or with one cross-entropy per
member, summed (``members``), which needs each member's logits: the kept model and the unfolded
merged form have them, the folded deployment merge does not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ccnbench.errors import UsageError
from ccnbench.models import build_kept, merge
from ccnbench.models.fusion import DecisionFusion
from ccnbench.models.spec import ModelSpec
from ccnbench.training.equivalent import EQUIVALENCE, UnfoldedDecision, kept_state_dict, training_form

LOSS_MODES = ("fused", "members")
OPTIMIZERS = ("sgd", "adam")
# float64 agreement of one step: relative to each tensor's magnitude (see ``tolerance``).
_EPS64 = torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class Batch:
    """Inputs and targets of one step: class labels, and a regression target for multitask."""

    inputs: tuple[Tensor, ...]
    labels: Tensor
    values: Tensor


def make_batch(spec: ModelSpec, batch: int, seed: int = 0, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> Batch:  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    inputs = tuple(
        torch.randn(batch, *spec.input_shape, generator=generator, dtype=dtype)
        for _ in range(spec.num_inputs)
    )
    labels = torch.randint(0, spec.classes, (batch,), generator=generator)
    values = torch.randn(batch, 1, generator=generator, dtype=dtype)
    return Batch(tuple(x.to(device) for x in inputs), labels.to(device), values.to(device))


def loss(model: nn.Module, batch: Batch, mode: str = "fused") -> Tensor:
    """The training loss of ``model`` (kept, merged or training form) on ``batch``."""
    if mode not in LOSS_MODES:
        raise UsageError(f"loss mode {mode!r}: choose from {', '.join(LOSS_MODES)}")
    if mode == "members":
        members = member_logits(model, batch.inputs)
        return sum(F.cross_entropy(members[:, i], batch.labels) for i in range(members.shape[1]))  # type: ignore[return-value]
    out = model(*batch.inputs)
    if isinstance(out, tuple):  # multitask: classification + regression
        return F.cross_entropy(out[0], batch.labels) + F.mse_loss(out[1], batch.values)
    return F.cross_entropy(out, batch.labels)


class MemberLogits(nn.Module):
    """A kept or unfolded decision fusion whose forward returns each member's logits (B, N,
    classes): the module a loss per member trains. ``torch.compile`` compiles a module's forward
    only, so a per-member loss must reach the members through a forward, not through a method of
    the compiled module's inner one (which runs eager)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        return member_logits(self.model, inputs)


def member_logits(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    """(B, N, classes) for a kept decision fusion or its unfolded form, or for either wrapped in
    ``MemberLogits``; a usage error otherwise. A compiled module is only ever called through its
    forward: a compiled decision fusion must be a ``MemberLogits`` before ``torch.compile``
    (reaching into ``_orig_mod`` for the members would run them eager)."""
    if isinstance(getattr(model, "_orig_mod", model), MemberLogits):
        return model(*inputs)  # through the compiled forward where there is one
    if isinstance(model, UnfoldedDecision):
        return model.member_logits(*inputs)
    if isinstance(model, DecisionFusion):
        per_branch = inputs * model.spec.branches if model.spec.input_mode == "shared" else inputs
        return torch.stack([m(x) for m, x in zip(model.members, per_branch)], dim=1)
    raise UsageError(
        "a loss per member needs decision fusion's kept or unfolded form (the folded head has none;"
        " compiled, wrapped in MemberLogits first)"
    )


def make_optimizer(name: str, params: object, lr: float = 0.05) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)  # type: ignore[arg-type]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr * 0.02)  # type: ignore[arg-type]
    raise UsageError(f"optimizer {name!r}: choose from {', '.join(OPTIMIZERS)}")


def step(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, mode: str = "fused") -> Tensor:
    """One optimisation step: forward, loss, backward, optimizer step. Returns the loss (detached)."""
    optimizer.zero_grad(set_to_none=True)
    value = loss(model, batch, mode)
    value.backward()
    optimizer.step()
    return value.detach()


def dropout_off(model: nn.Module) -> nn.Module:
    """Train mode (BatchNorm on batch statistics) with every Dropout an identity."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    return model


@dataclass(frozen=True)
class StepAgreement:
    """One step of the kept model and of a merged form from the same weights and batch."""

    label: str
    form: str
    optimizer: str
    loss_mode: str
    loss_difference: float
    max_abs_difference: float  # largest |kept - unmerged| over every parameter and buffer
    worst_tensor: str
    worst_ratio: float  # that tensor's difference over its tolerance: <= 1 agrees
    agrees: bool

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def tolerance(reference: Tensor, depth: int) -> float:
    """How far one float64 step may move a tensor between two summation orders.

    Each value of a step is a chain of reductions (convolutions over C·27 terms, BatchNorm over
    B·D·H·W, the head over the features, and the same again backwards): a reordered sum of n
    terms differs by about ``sqrt(n)·eps`` relative to the sum of magnitudes (random rounding),
    and each of the 2·(depth+1) reductions in the chain adds its share. With n up to ~1e5 that is
    ~300·eps per reduction; 1e4·eps·(depth+1) leaves a tenfold margin while staying ~1e6 below
    the float32 round-off a real discrepancy (a pooled statistic, a mis-split head) produces.
    """
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return 1e4 * _EPS64 * (depth + 1) * max(scale, 1.0)


FORMS = ("training", "deployment")


def check_step(spec: ModelSpec, batch_size: int = 4, optimizer: str = "sgd", loss_mode: str = "fused",
               seed: int = 0, form_name: str = "training") -> StepAgreement:  # fmt: skip
    """One float64 step of the kept module and of a merged form (its training form, or the
    deployment merge to show where that differs); compare, unmerged, every parameter and
    BatchNorm statistic."""
    if form_name not in FORMS:
        raise UsageError(f"form {form_name!r}: choose from {', '.join(FORMS)}")
    kept = dropout_off(build_kept(spec).double())
    make_form = training_form if form_name == "training" else merge
    form = dropout_off(make_form(copy.deepcopy(kept)))
    batch = make_batch(spec, batch_size, seed, torch.float64)
    kept_loss = step(kept, batch, make_optimizer(optimizer, kept.parameters()), loss_mode)
    form_loss = step(form, batch, make_optimizer(optimizer, form.parameters()), loss_mode)
    unmerged = kept_state_dict(form, spec)
    worst, worst_name, worst_ratio = 0.0, "", 0.0
    counters_agree = True
    for name, ref in kept.state_dict().items():
        if not ref.is_floating_point():  # num_batches_tracked: a count, equal or wrong
            counters_agree &= bool(torch.equal(unmerged[name], ref))
            continue
        diff = float((unmerged[name] - ref).abs().max())
        ratio = diff / tolerance(ref, spec.depth)
        if ratio >= worst_ratio:
            worst_name, worst_ratio = name, ratio
        worst = max(worst, diff)
    return StepAgreement(
        spec.label, EQUIVALENCE[spec.variant].training_form if form_name == "training" else "deployment merge", optimizer, loss_mode,
        abs(float(kept_loss - form_loss)), worst, worst_name, worst_ratio, counters_agree and worst_ratio <= 1.0,
    )  # fmt: skip
