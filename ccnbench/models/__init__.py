"""The networks: the fusion variants (specs, kept modules, their merged form and their cost), the
graph pass that merges a user's own module, and what a precision means to PyTorch."""

from __future__ import annotations

import torch
from torch import nn

from ccnbench.errors import UsageError
from ccnbench.models.flops import flops_per_sample
from ccnbench.models.fusion import KEPT_CLASSES, FusionNet
from ccnbench.models.merge import MergedFusion, merge
from ccnbench.models.spec import PRESETS, VARIANTS, ModelSpec, spec_from_preset

LAYOUTS = ("kept", "merged")
# What the graph pass may do to a user's module in the merged layout (--merge): "partial" also
# merges what is the same in branches that differ (graph_joint), "whole" only identical branches.
MERGE_MODES = ("partial", "whole")
DEFAULT_MERGE = "partial"
# Accepted but not offered, for the evidence: partial merges folded once in the batch, or around
# each merged child, instead of side by side in channels (graph_joint's forms).
MERGE_EVIDENCE_ONLY = ("partial-batch", "partial-per-child")

__all__ = [
    "DEFAULT_MERGE",
    "LAYOUTS",
    "MERGE_EVIDENCE_ONLY",
    "MERGE_MODES",
    "PRESETS",
    "VARIANTS",
    "FusionNet",
    "MergedFusion",
    "ModelSpec",
    "build",
    "build_kept",
    "count_parameters",
    "flops_per_sample",
    "merge",
    "spec_from_preset",
]


def build_kept(spec: ModelSpec) -> FusionNet:
    """Build the kept module of ``spec`` in eval mode, deterministically from ``spec.seed``.

    An untrained network's BatchNorm is an identity (mean 0, variance 1, weight 1, bias 0),
    which would hide a wrong channel order in any numeric check, so its statistics and affine
    parameters are drawn at random too, as a trained network would have them. The global RNG
    of the caller is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = KEPT_CLASSES[spec.variant](spec)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm3d):
                    module.running_mean.normal_(0.0, 0.2)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0.0, 0.2)
    return model.eval()


def build(spec: ModelSpec, layout: str = "kept") -> nn.Module:
    """The module of ``spec`` in ``layout`` ('kept' or 'merged'), eval mode, float32, CPU."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    kept = build_kept(spec)
    return kept if layout == "kept" else merge(kept)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def variant_specs(preset: str, branches: int | None = None) -> list[ModelSpec]:
    """One spec per variant and input mode at ``preset`` (shared input where a variant allows it)."""
    from ccnbench.models.spec import SHARED_INPUT_VARIANTS

    specs = []
    for variant in VARIANTS:
        specs.append(spec_from_preset(preset, variant, branches=branches))
        if variant in SHARED_INPUT_VARIANTS:
            specs.append(spec_from_preset(preset, variant, branches=branches, input_mode="shared"))
    return specs


def describe_variants(preset: str, branches: int | None = None) -> list[dict[str, object]]:
    """Rows for `ccnbench variants`: parameters of both layouts and FLOPs per sample."""
    from ccnbench.models.spec import VARIANT_DESCRIPTIONS

    rows: list[dict[str, object]] = []
    for spec in variant_specs(preset, branches):
        kept = build_kept(spec)
        rows.append(
            {
                "label": spec.label,
                "variant": spec.variant,
                "branches": spec.branches,
                "input_mode": spec.input_mode,
                "inputs": f"{spec.num_inputs} × {_volume_text(spec.volume)}",
                "params_kept": count_parameters(kept),
                "params_merged": count_parameters(merge(kept)),
                "flops_per_sample": flops_per_sample(spec),
                "description": VARIANT_DESCRIPTIONS[spec.variant],
                "spec": spec.to_dict(),
            }
        )
    return rows


def _volume_text(volume: tuple[int, int, int]) -> str:
    return f"{volume[0]}³" if len(set(volume)) == 1 else "x".join(map(str, volume))
