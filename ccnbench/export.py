"""Export a fusion variant to a validated ONNX artifact (branches kept or merged, fp32 or fp16).

fp16 route: the module itself is converted with ``module.half()`` and exported by the same
``torch.onnx.export(dynamo=True)`` call as fp32. Every op is then typed by the exporter that
traced it, so the graph is consistent by construction and needs no post-hoc rewrite (the
onnxconverter-common route rewrites initialisers and inserts casts after the fact, lags new
onnx releases and would be one more dependency). TensorRT 11 is strongly typed and reads
precision from the graph, and ONNX Runtime CUDA runs the same file. With fp32 I/O (the usual
deployment choice: callers keep their float32 tensors) the graph starts with a Cast to fp16
and ends with a Cast back; ``io="fp16"`` drops both casts.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import math
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ccnbench import __version__, fileio
from ccnbench.errors import CcnbenchError, UsageError, one_line
from ccnbench.models import LAYOUTS, ModelSpec, build
from ccnbench.models.cast import CastIO
from ccnbench.naming import file_name, identity_digest, precision_tag, writable_dir

PRECISIONS = ("fp32", "fp16")
IO_TYPES = ("fp32", "fp16")
# torch's exporter implements opset 18 natively and converts down to 17; newer opsets come from
# onnxscript. 18 is read by every runtime ccnbench targets (ONNX Runtime >= 1.14, TensorRT 10 and 11).
DEFAULT_OPSET = 18
MIN_OPSET = 17
DEFAULT_ARTIFACTS = Path("artifacts")
# Example batch for tracing: 1 would be specialised into the graph as a constant.
_TRACE_BATCH = 2
_MAX_BATCH = 4096
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
_ONNX_ELEM_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}
META_PREFIX = "ccnbench."


class ExportError(CcnbenchError):
    """The exporter failed or produced a graph that does not pass validation."""


def tiny_conv_onnx() -> bytes:
    """A one-Conv3d ONNX model (input ``x`` of shape 1x2x6x6x6, float32), built with onnx's API:
    what a runtime's warm-up loads to pay its one-time costs (see ``Backend.warm``)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 2, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "warm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])
    model.ir_version = min(model.ir_version, 9)  # readable by older runtimes too
    return model.SerializeToString()


def max_opset() -> int:
    import onnx

    return onnx.defs.onnx_opset_version()


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


# --- public API ---------------------------------------------------------------------------------


def artifact_name(spec: ModelSpec, layout: str, precision: str, io: str, opset: int) -> str:
    """File name that says what the artifact is, plus a hash of everything that changes its bytes."""
    identity = {
        "spec": spec.to_dict(),
        "torch": torch.__version__,
        "ccnbench": __version__,
        "exporter": _exporter_versions(),
    }
    shared = "-shared" if spec.input_mode == "shared" else ""
    what = [
        f"{spec.variant}{shared}",
        layout,
        f"n{spec.branches}",
        precision_tag(precision, io),
        f"op{opset}",
    ]
    return file_name(what, identity_digest(identity), ".onnx")


def export(
    spec: ModelSpec,
    layout: str = "kept",
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    out_dir: Path | str = DEFAULT_ARTIFACTS,
    io: str = "fp32",
    force: bool = False,
) -> Artifact:
    """Export ``spec`` in ``layout`` to ONNX under ``out_dir`` and validate it.

    An artifact with the same name (same spec, seed, versions and options) is reused unless
    ``force``. The file is written to a temporary name and renamed, so an interrupted or failed
    export never leaves a half-written file or replaces a good one.
    """
    _check_options(layout, precision, io, opset)
    path = writable_dir(Path(out_dir)) / artifact_name(spec, layout, precision, io, opset)
    reused = None if force else _reusable(path)
    if reused is not None:
        return reused
    return _export_to(
        build(spec, layout), path, spec.input_names, spec.input_shape, spec.output_names,
        precision, io, opset, layout=layout, spec=spec,
    )  # fmt: skip


def export_module(
    module: nn.Module,
    input_names: Sequence[str],
    input_shape: Sequence[int],
    path: Path,
    output_names: Sequence[str] | None = None,
    precision: str = "fp32",
    io: str = "fp32",
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    layout: str = "kept",
) -> Artifact:
    """Export a user's module (inputs of ``input_shape`` plus a dynamic batch) to ``path``, validated.

    ``layout`` is recorded in the file's metadata (a user's module merged by the graph pass is
    ``merged``)."""
    _check_options(layout, precision, io, opset)
    writable_dir(path.parent)
    reused = None if force else _reusable(path)
    if reused is not None:
        return reused
    return _export_to(module, path, input_names, input_shape, output_names, precision, io, opset, layout)


def _reusable(path: Path) -> Artifact | None:
    """The artifact already at ``path``, or None (absent, or damaged: exported again over it)."""
    if not path.exists():
        return None
    try:
        return load_artifact(path, reused=True)
    except CcnbenchError:
        return None


def _export_to(
    module: nn.Module,
    path: Path,
    input_names: Sequence[str],
    input_shape: Sequence[int],
    output_names: Sequence[str] | None,
    precision: str,
    io: str,
    opset: int,
    layout: str = "kept",
    spec: ModelSpec | None = None,
) -> Artifact:
    """Export, stamp metadata, validate (structure too when ``spec`` is known), save atomically."""
    start = time.perf_counter()
    proto = _export_proto(module, tuple(input_shape), list(input_names), output_names, precision, io, opset)
    metadata = {
        "version": __version__,
        "layout": layout,
        "precision": precision,
        "io": io,
        "torch": torch.__version__,
        "export_seconds": f"{time.perf_counter() - start:.3f}",
    }
    if spec is not None:
        metadata["spec"] = json.dumps(spec.to_dict(), sort_keys=True)
    _set_metadata(proto, metadata)
    validate(proto, spec=spec, layout=layout if spec else None, precision=precision, io=io)
    data = proto.SerializeToString()
    fileio.write_bytes(path, data)
    return _describe(proto, path, hashlib.sha256(data).hexdigest(), len(data))


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
    return _describe(proto, path, fileio.sha256(path), path.stat().st_size, reused)


def _describe(proto: Any, path: Path, sha256: str, size: int, reused: bool = False) -> Artifact:
    meta = {p.key[len(META_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
    spec = ModelSpec.from_dict(json.loads(meta["spec"])) if "spec" in meta else None
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    return Artifact(
        path=path,
        sha256=sha256,
        size_bytes=size,
        opset=_default_domain_opset(proto),
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


# --- internals ----------------------------------------------------------------------------------


def _export_proto(
    module: nn.Module,
    input_shape: tuple[int, ...],
    input_names: list[str],
    output_names: Sequence[str] | None,
    precision: str,
    io: str,
    opset: int,
) -> Any:
    dtype = _TORCH_DTYPES[precision]
    module = module.to(dtype)
    io_dtype = _TORCH_DTYPES[io]
    if io_dtype != dtype:
        module = CastIO(module, dtype)
    example = tuple(torch.randn(_TRACE_BATCH, *input_shape).to(io_dtype) for _ in input_names)
    return _run_exporter(module.eval(), example, input_names, output_names, opset)


def _run_exporter(
    module: nn.Module,
    example: tuple[Tensor, ...],
    input_names: list[str],
    output_names: Sequence[str] | None,
    opset: int,
) -> Any:
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    per_input = tuple({0: batch} for _ in example)
    # forward(*inputs) is one variadic argument to torch.export: its shapes nest one level down.
    variadic = any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values())
    dynamic_shapes = (per_input,) if variadic else per_input
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                example,
                None,
                dynamo=True,
                input_names=input_names,
                output_names=list(output_names) if output_names else None,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {_first_line(exc)}") from exc
    proto = program.model_proto
    produced = _default_domain_opset(proto)
    if produced != opset:
        raise UsageError(
            f"opset {opset} cannot be produced by this exporter (torch {torch.__version__} gave opset {produced}); "
            f"use {MIN_OPSET}..{max_opset()}"
        )
    return proto


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Drop the exporter's irrelevant notices; real warnings still reach the user.

    Dropped: the missing-torchvision registrations (ccnbench uses no torchvision ops), a
    pytree deprecation inside torch.export, the note that the shared ``batch`` axis name is
    reused, and the exporter's progress lines on stdout.
    """

    class _DropTorchvision(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "torchvision" not in record.getMessage()

    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    dropper = _DropTorchvision()
    registration.addFilter(dropper)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings(
                "ignore", message=r".*axis name: .* will not be used.*", category=UserWarning
            )
            yield
    finally:
        registration.removeFilter(dropper)


def _check_options(layout: str, precision: str, io: str, opset: int) -> None:
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if io not in IO_TYPES:
        raise UsageError(f"unknown I/O type {io!r}; choose from {', '.join(IO_TYPES)}")
    if io == "fp16" and precision == "fp32":
        raise UsageError("fp16 I/O needs --precision fp16 (an fp32 graph keeps fp32 I/O)")
    if not MIN_OPSET <= opset <= max_opset():
        raise UsageError(f"opset {opset} cannot be produced here; use {MIN_OPSET}..{max_opset()}")


def _set_metadata(proto: Any, values: dict[str, str]) -> None:
    keep = [p for p in proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    proto.producer_name = "ccnbench"
    proto.producer_version = __version__


def _exporter_versions() -> dict[str, str]:
    import onnx
    import onnxscript

    return {"onnx": onnx.__version__, "onnxscript": onnxscript.__version__}


def _default_domain_opset(proto: Any) -> int:
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # The exporter's messages start with a generic line; the summary names the real cause.
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1].strip()
    return one_line(text)
