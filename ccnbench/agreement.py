"""Numeric agreement of a target's outputs with the float64 oracle.

Pass rule, per element: ``|y - ref| <= atol + rtol * |ref|`` (numpy's allclose), with defaults
per precision and overrides per output. A NaN or Inf anywhere fails whatever the tolerance:
a tolerance is a statement about round-off, and a non-finite value is not round-off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ccnbench.errors import UsageError


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def __post_init__(self) -> None:
        if not (self.atol >= 0 and self.rtol >= 0 and math.isfinite(self.atol) and math.isfinite(self.rtol)):
            raise UsageError(f"tolerances must be finite and >= 0, got atol={self.atol}, rtol={self.rtol}")


# Outputs are logits and a regression value of order 1. fp32 kernels (different summation
# orders, Winograd/FFT convolutions, fused BatchNorm) stay near 1e-6 of that; the limits leave
# two orders of magnitude of headroom yet catch a wrong weight, which moves outputs by ~1e-2.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp64": Tolerance(atol=1e-10, rtol=1e-10),
    "fp32": Tolerance(atol=1e-4, rtol=1e-4),
    "fp16": Tolerance(atol=2e-2, rtol=2e-2),
    "bf16": Tolerance(atol=1e-1, rtol=5e-2),
}


@dataclass(frozen=True)
class TolerancePolicy:
    """Tolerances for one check: a precision's default, overridden globally and per output."""

    precision: str = "fp32"
    atol: float | None = None
    rtol: float | None = None
    per_output: Mapping[str, Tolerance] = field(default_factory=dict)

    def for_output(self, name: str) -> Tolerance:
        if name in self.per_output:
            return self.per_output[name]
        base = DEFAULT_TOLERANCES.get(self.precision, DEFAULT_TOLERANCES["fp32"])
        return Tolerance(
            atol=base.atol if self.atol is None else self.atol,
            rtol=base.rtol if self.rtol is None else self.rtol,
        )

    @staticmethod
    def parse_overrides(items: Sequence[str]) -> dict[str, Tolerance]:
        """``name=atol[,rtol]`` items, e.g. ``regression=1e-3,1e-3``."""
        parsed = {}
        for item in items:
            name, sep, values = item.partition("=")
            parts = values.split(",")
            try:
                atol = float(parts[0])
                rtol = float(parts[1]) if len(parts) > 1 else 0.0
            except (ValueError, IndexError) as exc:
                raise UsageError(
                    f"--tol {item!r}: expected name=atol[,rtol], e.g. regression=1e-3,1e-3"
                ) from exc
            if not sep or not name:
                raise UsageError(f"--tol {item!r}: expected name=atol[,rtol]")
            parsed[name] = Tolerance(atol, rtol)
        return parsed


@dataclass(frozen=True)
class OutputAgreement:
    """How one output compares with the oracle."""

    name: str
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    top1: float | None  # fraction of rows whose argmax matches (classification outputs)
    atol: float
    rtol: float
    required_atol: float  # the smallest atol that passes at this rtol (inf when non-finite)
    nonfinite: int  # NaN or Inf elements in the target's output
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Agreement:
    outputs: tuple[OutputAgreement, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def nonfinite(self) -> tuple[OutputAgreement, ...]:
        """The outputs holding NaN or Inf: a failure whatever the tolerance or the reference."""
        return tuple(o for o in self.outputs if o.nonfinite)

    @property
    def worst(self) -> OutputAgreement:
        """The output furthest from passing (largest required atol relative to its atol)."""
        return max(self.outputs, key=lambda o: o.required_atol / max(o.atol, 1e-300))

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "max_abs": _json_float(self.max_abs),
            "outputs": [o.to_dict() for o in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Agreement:
        outputs = []
        for o in data["outputs"]:
            values = {k: (float(v) if isinstance(v, str) and k not in ("name",) else v) for k, v in o.items()}
            outputs.append(OutputAgreement(**values))
        return cls(tuple(outputs))


def compare(
    outputs: Sequence[Tensor],
    reference: Sequence[Tensor],
    names: Sequence[str],
    policy: TolerancePolicy,
) -> Agreement:
    """Compare a target's outputs (any dtype, any device) with the oracle's float64 outputs."""
    if len(outputs) != len(reference):
        raise ValueError(f"target gave {len(outputs)} outputs, the oracle {len(reference)}")
    return Agreement(
        tuple(
            _compare_one(name, y, ref, policy.for_output(name))
            for name, y, ref in zip(names, outputs, reference)
        )
    )


def _compare_one(name: str, y: Tensor, ref: Tensor, tol: Tolerance) -> OutputAgreement:
    y = y.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    if y.shape != ref.shape:
        y = y.reshape(ref.shape) if y.numel() == ref.numel() else y
    if y.shape != ref.shape:
        raise ValueError(f"output {name}: shape {tuple(y.shape)} but the oracle's is {tuple(ref.shape)}")
    finite = torch.isfinite(y)
    nonfinite = int((~finite).sum())
    diff = (y - ref).abs()
    if nonfinite:
        diff = torch.where(finite, diff, torch.full_like(diff, math.inf))
    scale = ref.abs()
    excess = diff - tol.rtol * scale
    required = math.inf if nonfinite else float(excess.max().clamp(min=0.0)) if diff.numel() else 0.0
    passed = nonfinite == 0 and bool((diff <= tol.atol + tol.rtol * scale).all())
    rel = diff / scale.clamp(min=1e-12)
    cos = torch.nn.functional.cosine_similarity(
        torch.nan_to_num(y.flatten(), nan=0.0, posinf=0.0, neginf=0.0), ref.flatten(), dim=0, eps=1e-30
    )
    top1 = None
    # argmax ranks NaN first: rows of NaN would "agree" with a NaN reference.
    if name != "regression" and y.ndim == 2 and y.shape[1] > 1 and not nonfinite:
        top1 = float((y.argmax(dim=1) == ref.argmax(dim=1)).double().mean())
    return OutputAgreement(
        name=name,
        max_abs=float(diff.max()) if diff.numel() else 0.0,
        mean_abs=float(diff.mean()) if diff.numel() else 0.0,
        max_rel=float(rel.max()) if rel.numel() else 0.0,
        cosine=float(cos) if nonfinite == 0 else math.nan,
        top1=top1,
        atol=tol.atol,
        rtol=tol.rtol,
        required_atol=required,
        nonfinite=nonfinite,
        passed=passed,
    )


def _json_float(value: Any) -> Any:
    """JSON has no NaN or Infinity: write them as strings so files stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
