"""A trained checkpoint, merged: load a kept-layout state_dict, merge it, export it, check it.

The checkpoint is what ``torch.save(model.state_dict(), path)`` writes for a kept ccnbench
variant (or a dict holding it under ``state_dict``); the variant flags that built the model say
which module it belongs to. Every file written is graded against the float64 kept module with
the checkpoint's weights, at the precision's default tolerance (``ccnbench.measure.agreement``). Where
the merge is invertible, the merged weights are converted back to a kept state_dict and that
module's outputs are compared with the original's too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ccnbench.errors import CcnbenchError, UsageError, one_line
from ccnbench.measure.agreement import Agreement, TolerancePolicy, compare
from ccnbench.models import build_kept, merge
from ccnbench.models.fusion import FusionNet
from ccnbench.models.spec import ModelSpec
from ccnbench.training.equivalent import EQUIVALENCE, kept_state_dict

FORMATS = ("onnx", "pt2")
_CHECK_BATCH = 3
# float64 merged vs kept: reordered sums differ by ~1e-15 relative; a wrong weight by far more.
_FLOAT64_REL = 1e-10


def load_kept(path: Path, spec: ModelSpec) -> FusionNet:
    """The kept module of ``spec`` with the checkpoint's weights (eval mode, float32)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise UsageError(f"WEIGHTS {path}: no such file") from exc
    except Exception as exc:
        raise UsageError(f"WEIGHTS {path}: not a PyTorch state_dict: {one_line(exc, 200)}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"WEIGHTS {path}: holds a {type(state).__name__}, not a state_dict")
    kept = build_kept(spec)
    try:
        kept.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UsageError(
            f"WEIGHTS {path.name} does not fit {spec.label} (were the variant flags those it was "
            f"trained with?): {one_line(exc, 300)}"
        ) from exc
    return kept.eval()


@dataclass(frozen=True)
class CheckedFile:
    """One exported file of the merged module and how it agrees with the float64 kept module."""

    format: str
    path: Path
    agreement: Agreement

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path), **self.agreement.to_dict()}


@dataclass(frozen=True)
class CheckpointReport:
    label: str
    spec: ModelSpec
    # max |Δ| of the outputs over max(1, max |kept output|), both in float64 with the checkpoint's
    # weights: the merge, and the kept module rebuilt from the merged weights (None: not invertible).
    merged_difference: float
    invertible: bool
    roundtrip_difference: float | None
    files: tuple[CheckedFile, ...] = field(default=())

    @property
    def passed(self) -> bool:
        exact = self.merged_difference <= _FLOAT64_REL and (self.roundtrip_difference or 0.0) <= _FLOAT64_REL
        return exact and all(f.agreement.passed for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "spec": self.spec.to_dict(),
            "merged_difference": self.merged_difference,
            "invertible": self.invertible,
            "roundtrip_difference": self.roundtrip_difference,
            "files": [f.to_dict() for f in self.files],
            "passed": self.passed,
        }


def check_checkpoint(path: Path, spec: ModelSpec, out: Path | None = None,
                     formats: tuple[str, ...] = FORMATS) -> CheckpointReport:  # fmt: skip
    """Load, merge, (optionally) export, and check a kept checkpoint of ``spec``; see the module doc."""
    kept = load_kept(path, spec)
    inputs = _inputs(spec)
    reference = _outputs(kept.double(), inputs)
    merged = merge(kept).eval()  # float64 here: the merge itself is graded without float32 round-off
    merged_diff = _max_diff(_outputs(merged, inputs), reference)
    roundtrip = None
    invertible = EQUIVALENCE[spec.variant].invertible
    if invertible:
        rebuilt = build_kept(spec).double()
        rebuilt.load_state_dict(kept_state_dict(merged, spec))
        roundtrip = _max_diff(_outputs(rebuilt.eval(), inputs), reference)
    files = []
    if out is not None:
        merged32 = merge(load_kept(path, spec)).eval()
        for fmt in formats:
            files.append(_export_and_check(fmt, merged32, spec, out, path.stem, inputs, reference))
    return CheckpointReport(spec.label, spec, merged_diff, invertible, roundtrip, tuple(files))


def unmerge_file(merged_state: dict[str, Tensor], spec: ModelSpec) -> dict[str, Tensor]:
    """A merged module's state_dict (``merge(kept).state_dict()``) -> the kept state_dict."""
    if not EQUIVALENCE[spec.variant].invertible:
        raise CcnbenchError(f"{spec.label}: {EQUIVALENCE[spec.variant].why}, so it is not invertible")
    merged = merge(build_kept(spec))
    try:
        merged.load_state_dict(merged_state)
    except RuntimeError as exc:
        raise UsageError(f"the merged weights do not fit {spec.label}: {one_line(exc, 300)}") from exc
    return kept_state_dict(merged, spec)


def _inputs(spec: ModelSpec) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(spec.seed + 1)
    shape = (_CHECK_BATCH, *spec.input_shape)
    return tuple(torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(spec.num_inputs))


def _outputs(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    with torch.no_grad():
        out = module(*inputs)
    return tuple(out) if isinstance(out, tuple) else (out,)


def _max_diff(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> float:
    """max |a - b| over max(1, max |b|), the largest over the outputs."""
    return max(
        float((x.double() - y.double()).abs().max()) / max(1.0, float(y.abs().max())) for x, y in zip(a, b)
    )


def _export_and_check(fmt: str, merged: nn.Module, spec: ModelSpec, out: Path, stem: str,
                      inputs: tuple[Tensor, ...], reference: tuple[Tensor, ...]) -> CheckedFile:  # fmt: skip
    """Write the merged module as ONNX (run by ONNX Runtime) or .pt2 (AOTInductor) and grade it."""
    float_inputs = tuple(x.float() for x in inputs)
    if fmt == "onnx":
        from ccnbench.formats.onnx_export import export_module

        path = out / f"{stem}-{spec.label.replace('@', '-')}-merged.onnx"
        export_module(merged, spec.input_names, spec.input_shape, path, spec.output_names, layout="merged",
                      force=True)  # fmt: skip
        outputs = _run_onnx(path, spec, float_inputs)
    elif fmt == "pt2":
        path = out / f"{stem}-{spec.label.replace('@', '-')}-merged-cpu.pt2"
        outputs = _package_and_run(merged, path, float_inputs)
    else:
        raise UsageError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    agreement = compare(outputs, reference, spec.output_names, TolerancePolicy("fp32"))
    return CheckedFile(fmt, path, agreement)


def _run_onnx(path: Path, spec: ModelSpec, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    from ccnbench.deps import require

    ort = require("onnxruntime", extra="onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: x.numpy() for name, x in zip(spec.input_names, inputs)}
    return tuple(torch.from_numpy(y) for y in session.run(list(spec.output_names), feed))


def _package_and_run(merged: nn.Module, path: Path, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """An AOTInductor package of ``merged`` with a dynamic batch, loaded back and run.

    ccnbench.backends.aoti_build builds packages from a ModelSource (a spec or a factory, not given weights);
    until it takes a module, this is the same torch.export + aoti_compile_and_package path."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # A deprecation inside torch.export's pytree code, nothing the user can act on.
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            program = torch.export.export(merged, inputs, dynamic_shapes=(tuple({0: batch} for _ in inputs),))
            path.parent.mkdir(parents=True, exist_ok=True)
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as exc:
        raise CcnbenchError(f"AOTInductor could not package {path.name}: {one_line(exc)}") from exc
    loaded = torch._inductor.aoti_load_package(str(path))
    with torch.no_grad():
        out = loaded(*inputs)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)
