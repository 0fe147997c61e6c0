"""Merged must compute exactly what kept computes, with one op per layer instead of N."""

import itertools

import pytest
import torch
from torch import nn

from ccnbench.models import build_kept, merge, spec_from_preset
from ccnbench.models.spec import SHARED_INPUT_VARIANTS, VARIANTS

CASES = [
    (variant, mode, n)
    for variant, mode, n in itertools.product(VARIANTS, ("separate", "shared"), (1, 2, 3, 5))
    if mode == "separate" or variant in SHARED_INPUT_VARIANTS
]


def _spec(variant, mode, n, **extra):
    return spec_from_preset("tiny", variant, branches=n, input_mode=mode, **extra)


def _inputs(spec, batch, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *spec.input_shape, generator=g, dtype=dtype) for _ in range(spec.num_inputs)]


def _as_tuple(y):
    return y if isinstance(y, tuple) else (y,)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize(("variant", "mode", "n"), CASES)
def test_merged_equals_kept(variant, mode, n, batch):
    spec = _spec(variant, mode, n)
    kept = build_kept(spec)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, None)):
        k = kept.to(dtype)
        m = merge(k)
        assert not m.training
        xs = _inputs(spec, batch, dtype)
        with torch.no_grad():
            outs_k, outs_m = _as_tuple(k(*xs)), _as_tuple(m(*xs))
        assert len(outs_k) == len(outs_m) == len(spec.output_names)
        for yk, ym, size in zip(outs_k, outs_m, spec.output_sizes):
            assert yk.shape == ym.shape == (batch, size)
            assert yk.abs().max() > 1e-3  # a real signal, not zeros that match trivially
            if tol is not None:
                assert (yk - ym).abs().max().item() <= tol
            else:  # float32 round-off of sums over thousands of terms
                torch.testing.assert_close(ym, yk, rtol=1e-5, atol=1e-5)


def test_decision_weights_are_folded_into_the_merged_classifier():
    spec = spec_from_preset("tiny", "decision", branches=3, decision_weights=(5.0, 1.0, 2.0))
    kept = build_kept(spec).double()
    xs = _inputs(spec, 2, torch.float64)
    merged = merge(kept)
    with torch.no_grad():
        members = torch.stack([member(x) for member, x in zip(kept.members, xs)], dim=-1)
        expected = members @ torch.tensor([5 / 8, 1 / 8, 2 / 8], dtype=torch.float64)
        assert (merged(*xs) - expected).abs().max() < 1e-12
        # Equal weights give a different answer: the weights really are in the folded Linear.
        equal = merge(build_kept(spec.with_(decision_weights=None)).double())
        assert (equal(*xs) - expected).abs().max() > 1e-4


def test_built_batchnorm_is_not_the_identity():
    kept = build_kept(_spec("model", "separate", 2))
    norms = [m for m in kept.modules() if isinstance(m, nn.BatchNorm3d)]
    assert norms
    for bn in norms:
        assert bn.running_mean.abs().max() > 0.01
        assert (bn.running_var - 1).abs().max() > 0.01
        assert (bn.weight - 1).abs().max() > 0.01


def test_build_is_deterministic_and_leaves_global_rng_alone():
    spec = _spec("feature", "separate", 2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_kept(spec)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = build_kept(spec)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    c = build_kept(spec.with_(seed=7))
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def _conv_calls(module, xs):
    calls = []
    hooks = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in module.modules()
        if isinstance(m, nn.Conv3d)
    ]
    with torch.no_grad():
        module(*xs)
    for h in hooks:
        h.remove()
    return len(calls)


@pytest.mark.parametrize(("variant", "mode", "n"), [c for c in CASES if c[2] in (1, 3, 5)])
def test_merged_runs_one_conv_per_layer_kept_runs_n(variant, mode, n):
    spec = _spec(variant, mode, n)
    kept = build_kept(spec)
    xs = _inputs(spec, 2, torch.float32)
    per_layer_kept = 1 if variant == "early" else n
    assert _conv_calls(kept, xs) == spec.depth * per_layer_kept
    assert _conv_calls(merge(kept), xs) == spec.depth


@pytest.mark.parametrize(
    ("variant", "mode"), [(v, "separate") for v in VARIANTS] + [(v, "shared") for v in SHARED_INPUT_VARIANTS]
)
@pytest.mark.parametrize("layout", ["kept", "merged"])
def test_gradient_reaches_every_branch_and_input(variant, mode, layout):
    spec = _spec(variant, mode, 3, dropout=0.0)
    module = build_kept(spec)
    if layout == "merged":
        module = merge(module)
    module.train()
    xs = [x.requires_grad_() for x in _inputs(spec, 2, torch.float32)]
    outputs = _as_tuple(module(*xs))
    sum(y.square().sum() for y in outputs).backward()
    # Every input (so every branch, a shared extractor too) receives gradient...
    for x in xs:
        assert x.grad is not None and x.grad.abs().sum() > 0
    # ... and so does every convolution weight, per branch where branches have their own.
    for conv in (m for m in module.modules() if isinstance(m, nn.Conv3d)):
        grad = conv.weight.grad
        assert grad is not None
        per_branch = grad.reshape(conv.groups, -1) if conv.groups > 1 else grad.reshape(1, -1)
        assert (per_branch.abs().sum(dim=1) > 0).all()
    if variant in ("model", "decision") and layout == "kept":
        assert len([m for m in module.modules() if isinstance(m, nn.Conv3d)]) == spec.depth * 3
