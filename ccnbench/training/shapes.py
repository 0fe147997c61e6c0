"""Shape trace: each layer's output shape through the extractor, and the size the classifier receives.

For ccnbench's variants the trace is computed from the spec (Conv3d k=3 without padding takes 2
voxels per axis, MaxPool3d(2, stride 1) one), so a volume too small for the stack is reported
as the layer where it runs out before any module is built. For a user's module the trace is
read from a forward pass at batch 1 with a hook on every leaf module; a layer that cannot take
what it receives (a volume gone below the kernel, a ``Linear`` whose ``in_features`` is not the
flattened size) becomes a usage error that names it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ccnbench.errors import UsageError, one_line
from ccnbench.models import build_kept, count_parameters, flops_per_sample, merge
from ccnbench.models.spec import KERNEL, PRESETS, ModelSpec, spec_from_preset

POOL = 2


@dataclass(frozen=True)
class LayerShape:
    """One layer's output shape without the batch dimension (channels first)."""

    name: str
    kind: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape)}


@dataclass(frozen=True)
class ShapeTrace:
    """A variant's (or a user module's) layers, the classifier's input size, parameters and FLOPs.

    ``classifier_in`` is what each ``Linear`` head receives (name -> features); for the built-in
    variants ``repeat`` says how many branches run the traced extractor.
    """

    label: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerShape, ...]
    classifier_in: dict[str, int]
    params: int
    params_merged: int | None = None
    flops_per_sample: int | None = None
    repeat: int = 1
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "input_shape": list(self.input_shape),
            "layers": [layer.to_dict() for layer in self.layers],
            "classifier_in": dict(self.classifier_in),
            "params": self.params,
            "params_merged": self.params_merged,
            "flops_per_sample": self.flops_per_sample,
            "repeat": self.repeat,
            "notes": list(self.notes),
        }


def extractor_layers(prefix: str, in_channels: int, volume: tuple[int, ...], filters: int, depth: int,
                     what: str = "volume") -> list[LayerShape]:  # fmt: skip
    """The layers of one extractor, computed; a usage error naming the layer where the volume runs out."""
    layers: list[LayerShape] = []
    size = tuple(volume)
    start = "x".join(map(str, volume))
    for block in range(depth):
        for kind, trim in (("Conv3d", KERNEL - 1), ("MaxPool3d", POOL - 1)):
            name = f"{prefix}{block}.{'conv' if kind == 'Conv3d' else 'pool'}"
            if min(size) - trim < 1:
                raise UsageError(
                    f"{what} {start} is too small: it runs out at {name} ({kind}, block {block + 1} of "
                    f"{depth}), which gets {'x'.join(map(str, size))} and needs at least {trim + 1} per axis"
                )
            size = tuple(s - trim for s in size)
            layers.append(LayerShape(name, kind, (filters, *size)))
        for kind, short in (("BatchNorm3d", "norm"), ("LeakyReLU", "act"), ("Dropout", "drop")):
            layers.append(LayerShape(f"{prefix}{block}.{short}", kind, (filters, *size)))
    return layers


# Where one extractor sits in each kept variant, and the heads that read the features.
_EXTRACTOR = {
    "early": "extractor.",
    "feature": "extractor.",
    "model": "extractors.0.",
    "decision": "members.0.extractor.",
    "multitask": "trunk.",
}


def trace_variant(
    preset: str, variant: str, branches: int | None = None, volume: tuple[int, int, int] | None = None,
    input_mode: str = "separate",
) -> ShapeTrace:  # fmt: skip
    """The shape trace of a built-in variant at ``preset`` (``volume`` overrides the preset's)."""
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset]
    n = branches or p.branches
    vol = tuple(volume) if volume else p.volume
    in_channels = n if variant == "early" else 1
    layers = extractor_layers(_EXTRACTOR.get(variant, "extractor."), in_channels, vol, p.filters, p.depth)
    spec = spec_from_preset(preset, variant, branches=branches, volume=vol, input_mode=input_mode)
    per_extractor = math.prod(layers[-1].shape)
    layers.append(LayerShape(f"{_EXTRACTOR[variant]}flatten", "Flatten", (per_extractor,)))
    heads = _heads(spec, per_extractor)
    kept = build_kept(spec)
    repeat = 1 if variant == "early" else spec.branches
    notes = [] if repeat == 1 else [f"the extractor shown runs on each of the {repeat} branches"]
    return ShapeTrace(
        spec.label, (spec.num_inputs, *spec.input_shape), tuple(layers), heads, count_parameters(kept),
        count_parameters(merge(kept)), flops_per_sample(spec), repeat, tuple(notes),
    )  # fmt: skip


def _heads(spec: ModelSpec, per_extractor: int) -> dict[str, int]:
    n = spec.branches
    if spec.variant == "early":
        return {"classifier": per_extractor}
    if spec.variant == "decision":
        return {f"members.{i}.classifier": per_extractor for i in range(n)}
    if spec.variant == "multitask":
        return {"classifier": n * per_extractor, "regressor": n * per_extractor}
    return {"classifier": n * per_extractor}


def trace_module(module: nn.Module, input_shape: tuple[int, ...], num_inputs: int = 1,
                 label: str = "module") -> ShapeTrace:  # fmt: skip
    """The shape trace of any module, read from one batch-1 forward pass (eval mode, no grad).

    Every leaf module's first call is recorded; a module called again (a shared extractor) is
    recorded once. A failure inside a layer is a usage error naming that layer.
    """
    seen: dict[str, LayerShape] = {}
    heads: dict[str, int] = {}
    current: list[str] = []
    handles = []
    for name, leaf in module.named_modules():
        if next(leaf.children(), None) is not None or not name:
            continue
        handles.append(leaf.register_forward_pre_hook(_pre_hook(name, heads, current)))
        handles.append(leaf.register_forward_hook(_post_hook(name, seen)))
    inputs = tuple(torch.zeros(1, *input_shape) for _ in range(num_inputs))
    try:
        with torch.no_grad():
            module.eval()(*inputs)
    except UsageError:
        raise
    except Exception as exc:
        shape = "x".join(map(str, input_shape))
        # No layer entered yet: the forward itself refused the inputs (most often their number).
        plural = "s" if num_inputs != 1 else ""
        where = (
            f"at {current[-1]} ({type(module.get_submodule(current[-1])).__name__})"
            if current
            else f"({type(module).__name__}.forward called with {num_inputs} input{plural}; --branches sets how many)"
        )
        raise UsageError(
            f"input shape {shape} does not fit the module {where}: {one_line(exc, 300)}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    return ShapeTrace(
        label, (num_inputs, *input_shape), tuple(seen.values()), heads, count_parameters(module)
    )


def _pre_hook(name: str, heads: dict[str, int], current: list[str]) -> Any:
    def hook(layer: nn.Module, args: tuple[Any, ...]) -> None:
        current.append(name)
        x = args[0] if args else None
        if isinstance(layer, nn.Linear) and isinstance(x, Tensor):
            got = x.shape[-1]
            if got != layer.in_features:
                raise UsageError(
                    f"{name} (Linear) receives {got} features but has in_features={layer.in_features}: "
                    f"make it Linear({got}, {layer.out_features})"
                )
            heads.setdefault(name, got)

    return hook


def _post_hook(name: str, seen: dict[str, LayerShape]) -> Any:
    def hook(layer: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if name not in seen and isinstance(output, Tensor):
            seen[name] = LayerShape(name, type(layer).__name__, tuple(output.shape[1:]))

    return hook
