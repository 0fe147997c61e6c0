"""What an ONNX file is: ``Artifact``, read from any file (``load_artifact``) and checked (``validate``).

ccnbench's own exports carry their description in metadata (``ccnbench.*`` keys); a user's file
is described from its graph. ``validate`` is the checker, strict shape inference and the
structure a variant's layout implies, and raises ``ExportError`` on the first failure.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccnbench import fileio
from ccnbench.errors import CcnbenchError, one_line
from ccnbench.models import ModelSpec

_ONNX_ELEM_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}
META_PREFIX = "ccnbench."


class ExportError(CcnbenchError):
    """The exporter failed or produced a graph that does not pass validation."""


@dataclass(frozen=True)
class Artifact:
    """One ONNX file and what it is. ``spec`` is None for a user's own ONNX file."""

    path: Path
    sha256: str
    size_bytes: int
    opset: int
    precision: str
    io: str
    layout: str
    spec: ModelSpec | None
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shapes: tuple[tuple[int | str, ...], ...]
    op_histogram: dict[str, int] = field(default_factory=dict)
    parameters: int = 0  # every stored value: weights, BatchNorm statistics and constants
    export_seconds: float = 0.0
    reused: bool = False

    @property
    def conv_count(self) -> int:
        return self.op_histogram.get("Conv", 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "file": self.path.name,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "opset": self.opset,
            "precision": self.precision,
            "io": self.io,
            "layout": self.layout,
            "spec": self.spec.to_dict() if self.spec else None,
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
            "input_shapes": [list(s) for s in self.input_shapes],
            "op_histogram": dict(self.op_histogram),
            "conv_count": self.conv_count,
            "parameters": self.parameters,
            "export_seconds": round(self.export_seconds, 3),
            "reused": self.reused,
        }


def load_artifact(path: Path | str, reused: bool = False) -> Artifact:
    """Describe an ONNX file: ccnbench's own (metadata says what it is) or anyone's."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CcnbenchError(f"no ONNX file at {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise CcnbenchError(f"{path} is not a readable ONNX model: {exc}") from exc
    return describe(proto, path, fileio.sha256(path), path.stat().st_size, reused)


def describe(proto: Any, path: Path, sha256: str, size: int, reused: bool = False) -> Artifact:
    meta = {p.key[len(META_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
    spec = ModelSpec.from_dict(json.loads(meta["spec"])) if "spec" in meta else None
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    return Artifact(
        path=path,
        sha256=sha256,
        size_bytes=size,
        opset=default_domain_opset(proto),
        precision=meta.get("precision") or _weight_precision(proto),
        io=meta.get("io") or _io_type(proto),
        layout=meta.get("layout", "unknown"),
        spec=spec,
        input_names=tuple(i.name for i in inputs),
        output_names=tuple(o.name for o in proto.graph.output),
        input_shapes=tuple(_shape(i) for i in inputs),
        op_histogram=op_histogram(proto),
        parameters=sum(math.prod(t.dims) for t in proto.graph.initializer),
        export_seconds=float(meta.get("export_seconds", 0.0)),
        reused=reused,
    )


def op_histogram(proto: Any) -> dict[str, int]:
    counts = Counter(node.op_type for node in proto.graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def expected_conv_count(spec: ModelSpec, layout: str) -> int:
    """Conv nodes a correct graph has: one per extractor layer merged, N kept (early: one)."""
    per_layer = spec.branches if layout == "kept" and spec.has_branches else 1
    return spec.depth * per_layer


def validate(
    proto: Any,
    spec: ModelSpec | None = None,
    layout: str | None = None,
    precision: str | None = None,
    io: str | None = None,
) -> None:
    """Checker (full), strict shape inference, then the structure the claims imply.

    Raises ExportError on the first failure; a failed check is never a warning.
    """
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"ONNX validation failed: {one_line(exc, 500)}") from exc
    if spec is None:
        return
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    names = tuple(i.name for i in inputs)
    if names != spec.input_names:
        raise ExportError(f"graph inputs are {names}, expected {spec.input_names}")
    outputs = tuple(o.name for o in proto.graph.output)
    if outputs != spec.output_names:
        raise ExportError(f"graph outputs are {outputs}, expected {spec.output_names}")
    for graph_input in inputs:
        shape = _shape(graph_input)
        if not isinstance(shape[0], str) or tuple(shape[1:]) != spec.input_shape:
            raise ExportError(
                f"input {graph_input.name} has shape {shape}, expected (batch, {', '.join(map(str, spec.input_shape))})"
            )
    if layout is not None:
        convs = op_histogram(proto).get("Conv", 0)
        expected = expected_conv_count(spec, layout)
        if convs != expected:
            raise ExportError(
                f"structure check failed: a {layout} {spec.label} graph has {expected} Conv nodes "
                f"({spec.depth} layers), this one has {convs}"
            )
    if precision is not None and _weight_precision(proto) != precision:
        raise ExportError(f"weights are {_weight_precision(proto)}, expected {precision}")
    if io is not None and _io_type(proto) != io:
        raise ExportError(f"graph I/O is {_io_type(proto)}, expected {io}")


def default_domain_opset(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _weight_precision(proto: Any) -> str:
    """fp16 if the floating-point weights are fp16, else fp32 (what the graph computes in)."""
    kinds = Counter(_ONNX_ELEM_TYPES.get(t.data_type) for t in proto.graph.initializer if t.dims)
    floats = {k: v for k, v in kinds.items() if k in ("float16", "float32", "bfloat16")}
    if not floats:
        return "fp32"
    dominant = max(floats, key=lambda k: floats[k])
    return {"float16": "fp16", "float32": "fp32", "bfloat16": "bf16"}[dominant]


def _io_type(proto: Any) -> str:
    elem = proto.graph.input[0].type.tensor_type.elem_type if proto.graph.input else 1
    return {"float16": "fp16", "bfloat16": "bf16"}.get(_ONNX_ELEM_TYPES.get(elem, ""), "fp32")


def _shape(value_info: Any) -> tuple[int | str, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_param if d.dim_param else d.dim_value for d in dims)
