"""FLOPs of a spec, computed analytically (2 × multiply-accumulates of Conv3d and Linear).

Pooling, BatchNorm and activations are a few operations per element against hundreds per
output voxel of a 3×3×3 convolution, so they are left out, as fvcore and PyTorch's
FlopCounterMode do. Kept and merged layouts do the same arithmetic and have the same count.
"""

from __future__ import annotations

import math

from ccnbench.models.spec import KERNEL, TRIM_PER_BLOCK, ModelSpec


def extractor_macs(spec: ModelSpec, in_channels: int = 1) -> int:
    """Multiply-accumulates of one extractor on one sample."""
    macs = 0
    size = spec.volume
    channels = in_channels
    for _ in range(spec.depth):
        conv_out = tuple(s - (KERNEL - 1) for s in size)
        macs += spec.filters * channels * KERNEL**3 * math.prod(conv_out)
        size = tuple(s - TRIM_PER_BLOCK for s in size)
        channels = spec.filters
    return macs


def flops_per_sample(spec: ModelSpec) -> int:
    """Floating-point operations for one sample of the batch (both layouts)."""
    features = spec.features_per_extractor
    n = spec.branches
    if spec.variant == "early":
        macs = extractor_macs(spec, in_channels=n) + features * spec.classes
    elif spec.variant in ("feature", "model"):
        macs = n * extractor_macs(spec) + n * features * spec.classes
    elif spec.variant == "decision":
        # N member classifiers; the weighted sum of their logits (N·classes) folds into them when merged.
        macs = n * (extractor_macs(spec) + features * spec.classes)
    else:  # multitask: shared trunk over N inputs, two heads
        macs = n * extractor_macs(spec) + n * features * (spec.classes + 1)
    return 2 * macs
