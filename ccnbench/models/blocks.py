"""The extractor block every variant is made of."""

from __future__ import annotations

import itertools
from typing import Any

from torch import nn

from ccnbench.models.spec import KERNEL, ModelSpec

LEAKY_SLOPE = 0.01


class ExtractorBlock(nn.Sequential):
    """Conv3d(k=3, pad=0, no bias) -> MaxPool3d(k=2, s=1) -> BatchNorm3d -> LeakyReLU -> Dropout.

    ``groups`` > 1 makes this the horizontally merged form of ``groups`` parallel blocks;
    ``factory`` (device, dtype) goes to the parameterised layers.
    """

    def __init__(
        self, in_channels: int, out_channels: int, dropout: float, groups: int = 1, **factory: Any
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, KERNEL, stride=1, padding=0, bias=False, groups=groups, **factory
        )
        self.pool = nn.MaxPool3d(kernel_size=2, stride=1)
        self.norm = nn.BatchNorm3d(out_channels, **factory)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.drop = nn.Dropout(dropout)


class Extractor(nn.Sequential):
    """``depth`` blocks of ``filters`` channels over an input of ``in_channels`` channels."""

    def __init__(self, spec: ModelSpec, in_channels: int = 1) -> None:
        widths = [in_channels] + [spec.filters] * spec.depth
        super().__init__(*(ExtractorBlock(a, b, spec.dropout) for a, b in itertools.pairwise(widths)))
