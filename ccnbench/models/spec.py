"""ModelSpec: the validated, frozen description every variant is built from."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ccnbench.errors import SpecError, UsageError

VARIANTS = ("early", "feature", "model", "decision", "multitask")
INPUT_MODES = ("separate", "shared")
# Only fusions whose branches have their own weights can sensibly share one input volume;
# the others would compute the same features N times.
SHARED_INPUT_VARIANTS = ("model", "decision")
# Each block trims the volume: Conv3d(k=3, pad=0) takes 2 voxels per axis, MaxPool3d(k=2, s=1) one.
TRIM_PER_BLOCK = 3
KERNEL = 3

VARIANT_DESCRIPTIONS = {
    "early": "inputs stacked as channels into one extractor (the baseline)",
    "feature": "one shared extractor applied to each input, features concatenated, one classifier",
    "model": "a separate extractor per branch, features concatenated, one classifier",
    "decision": "N complete models, logits combined by a fixed weighted sum",
    "multitask": "shared trunk, a classification head and a regression head",
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one fusion variant deterministically.

    ``branches`` is N, the number of inputs or sub-models; ``volume`` is D×H×W of each
    single-channel input; every extractor block has ``filters`` output channels.
    ``decision_weights`` (decision fusion only) are normalised to sum to one; None means equal.
    """

    variant: str
    branches: int = 3
    input_mode: str = "separate"
    volume: tuple[int, int, int] = (24, 24, 24)
    filters: int = 8
    depth: int = 2
    classes: int = 30
    dropout: float = 0.1
    decision_weights: tuple[float, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # JSON and TOML give lists; keep the spec hashable and comparable.
        object.__setattr__(self, "volume", tuple(self.volume))
        if self.decision_weights is not None:
            object.__setattr__(self, "decision_weights", tuple(self.decision_weights))
        self._validate()

    def _validate(self) -> None:
        if self.variant not in VARIANTS:
            raise SpecError("variant", f"unknown variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        for name in ("branches", "filters", "depth", "classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(name, f"must be an integer >= 1, got {value!r}")
        if self.input_mode not in INPUT_MODES:
            raise SpecError("input_mode", f"must be one of {', '.join(INPUT_MODES)}, got {self.input_mode!r}")
        if self.input_mode == "shared" and self.variant not in SHARED_INPUT_VARIANTS:
            raise SpecError(
                "input_mode",
                f"'shared' needs branches with their own weights ({', '.join(SHARED_INPUT_VARIANTS)}); "
                f"{self.variant} fusion takes one input per branch",
            )
        if len(self.volume) != 3 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in self.volume
        ):
            raise SpecError("volume", f"must be three integers D, H, W, got {self.volume!r}")
        if any(v < 1 for v in self.volume):
            raise SpecError("volume", f"sizes must be positive, got {'x'.join(map(str, self.volume))}")
        need = TRIM_PER_BLOCK * self.depth + 1
        if min(self.volume) < need:
            raise SpecError(
                "volume",
                f"{'x'.join(map(str, self.volume))} is too small for depth {self.depth}: each block trims "
                f"{TRIM_PER_BLOCK} voxels per axis, so every axis needs at least {need}",
            )
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise SpecError("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise SpecError("seed", f"must be a non-negative integer, got {self.seed!r}")
        self._validate_weights()

    def _validate_weights(self) -> None:
        weights = self.decision_weights
        if weights is None:
            return
        if self.variant != "decision":
            raise SpecError("decision_weights", f"only decision fusion has them, not {self.variant}")
        if len(weights) != self.branches:
            raise SpecError(
                "decision_weights", f"needs one weight per branch ({self.branches}), got {len(weights)}"
            )
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise SpecError(
                "decision_weights", f"must be finite, non-negative and not all zero, got {weights}"
            )

    # --- derived facts -------------------------------------------------------------------

    @property
    def has_branches(self) -> bool:
        """True when the network has N parallel branches that merging fuses into one op."""
        return self.variant != "early" and self.branches > 1

    @property
    def num_inputs(self) -> int:
        return 1 if self.input_mode == "shared" else self.branches

    @property
    def input_names(self) -> tuple[str, ...]:
        if self.input_mode == "shared":
            return ("input",)
        return tuple(f"input_{i}" for i in range(self.branches))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of one input without the batch dimension: one channel, D, H, W."""
        return (1, *self.volume)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("logits", "regression") if self.variant == "multitask" else ("logits",)

    @property
    def output_sizes(self) -> tuple[int, ...]:
        return (self.classes, 1) if self.variant == "multitask" else (self.classes,)

    @property
    def feature_volume(self) -> tuple[int, int, int]:
        """Spatial size of one extractor's output."""
        trim = TRIM_PER_BLOCK * self.depth
        return tuple(v - trim for v in self.volume)  # type: ignore[return-value]

    @property
    def features_per_extractor(self) -> int:
        """Flattened feature count of one extractor, computed, never typed by hand."""
        return self.filters * math.prod(self.feature_volume)

    @property
    def normalized_weights(self) -> tuple[float, ...]:
        weights = self.decision_weights or (1.0,) * self.branches
        total = float(sum(weights))
        return tuple(float(w) / total for w in weights)

    @property
    def label(self) -> str:
        """Short human label: variant, N, input mode where it matters, and the size.

        The size is the preset's name when the spec has a preset's volume, width and depth
        (``model-n4@medium``), else written out (``model-n4@20x20x20f8d2``), so runs of different
        sizes never share a label in a report.
        """
        shared = "-shared" if self.input_mode == "shared" else ""
        size = next(
            (
                p.name
                for p in PRESETS.values()
                if (p.volume, p.filters, p.depth) == (self.volume, self.filters, self.depth)
            ),
            f"{'x'.join(map(str, self.volume))}f{self.filters}d{self.depth}",
        )
        return f"{self.variant}-n{self.branches}{shared}@{size}"

    # --- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["volume"] = list(self.volume)
        if self.decision_weights is not None:
            data["decision_weights"] = list(self.decision_weights)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(unknown[0], f"unknown spec field; known fields are {', '.join(sorted(known))}")
        if "variant" not in data:
            raise SpecError("variant", "missing")
        return cls(**dict(data))

    def digest(self, length: int = 8) -> str:
        """Stable short hash of the spec (weights are a function of the spec, seed included)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:length]

    def with_(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)


@dataclass(frozen=True)
class Preset:
    """A named size: volume, width and depth, plus a default branch count."""

    name: str
    volume: tuple[int, int, int]
    filters: int
    depth: int
    branches: int = 3
    purpose: str = field(default="", compare=False)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", (12, 12, 12), filters=4, depth=2, purpose="unit tests and CI, milliseconds on a CPU"),
        Preset("small", (24, 24, 24), filters=8, depth=2, purpose="the CPU default"),
        Preset("medium", (32, 32, 32), filters=16, depth=3, purpose="a GPU-sized default"),
    )
}


def spec_from_preset(preset: str, variant: str, **overrides: Any) -> ModelSpec:
    """Build a spec from a named preset; ``overrides`` (None values ignored) win over it."""
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset]
    values: dict[str, Any] = {
        "variant": variant,
        "volume": p.volume,
        "filters": p.filters,
        "depth": p.depth,
        "branches": p.branches,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelSpec(**values)
