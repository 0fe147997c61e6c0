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
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ccnbench import __version__, fileio
from ccnbench.errors import CcnbenchError, UsageError, one_line
from ccnbench.formats.file_names import file_name, identity_digest, precision_tag, writable_dir
from ccnbench.formats.int8 import INT8_PRECISIONS, calibration_inputs, is_int8, recipe_for, write_int8
from ccnbench.formats.onnx_artifact import (
    META_PREFIX,
    Artifact,
    ExportError,
    default_domain_opset,
    describe,
    load_artifact,
    validate,
)
from ccnbench.models import LAYOUTS, ModelSpec, build
from ccnbench.models.cast import CastIO

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
    calibration: Path | str | None = None,
) -> Artifact:
    """Export ``spec`` in ``layout`` to ONNX under ``out_dir`` and validate it.

    An artifact with the same name (same spec, seed, versions and options) is reused unless
    ``force``. The file is written to a temporary name and renamed, so an interrupted or failed
    export never leaves a half-written file or replaces a good one. An int8 precision is the fp32
    file quantized (``calibration``: the user's ``.npz``; seeded inputs without it).
    """
    _check_options(layout, precision, io, opset)
    if is_int8(precision):
        fp32 = export(spec, layout, "fp32", opset, out_dir, force=force)
        recipe = recipe_for(precision, calibration)
        feeds = calibration_inputs(recipe, spec.input_names, spec.input_shape, calibration)
        return write_int8(fp32, recipe, feeds, spec=spec, force=force)
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
    calibration: Path | str | None = None,
) -> Artifact:
    """Export a user's module (inputs of ``input_shape`` plus a dynamic batch) to ``path``, validated.

    ``layout`` is recorded in the file's metadata (a user's module merged by the graph pass is
    ``merged``)."""
    _check_options(layout, precision, io, opset)
    writable_dir(path.parent)
    if is_int8(precision):
        tag = f"-{precision_tag(precision, io)}-"
        fp32_path = path.with_name(path.name.replace(tag, "-fp32-", 1))
        fp32 = export_module(module, input_names, input_shape, fp32_path, output_names, opset=opset,
                             force=force, layout=layout)  # fmt: skip
        recipe = recipe_for(precision, calibration)
        feeds = calibration_inputs(recipe, input_names, input_shape, calibration)
        return write_int8(fp32, recipe, feeds, force=force, path=path)
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
    set_metadata(proto, metadata)
    validate(proto, spec=spec, layout=layout if spec else None, precision=precision, io=io)
    data = proto.SerializeToString()
    fileio.write_bytes(path, data)
    return describe(proto, path, hashlib.sha256(data).hexdigest(), len(data))


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
    produced = default_domain_opset(proto)
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
    if precision not in (*PRECISIONS, *INT8_PRECISIONS):
        raise UsageError(
            f"unknown precision {precision!r}; choose from {', '.join((*PRECISIONS, *INT8_PRECISIONS))}"
        )
    if io not in IO_TYPES:
        raise UsageError(f"unknown I/O type {io!r}; choose from {', '.join(IO_TYPES)}")
    if io == "fp16" and precision != "fp16":
        raise UsageError(f"fp16 I/O needs --precision fp16 (an {precision} graph keeps fp32 I/O)")
    if not MIN_OPSET <= opset <= max_opset():
        raise UsageError(f"opset {opset} cannot be produced here; use {MIN_OPSET}..{max_opset()}")


def set_metadata(proto: Any, values: dict[str, str]) -> None:
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # The exporter's messages start with a generic line; the summary names the real cause.
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1].strip()
    return one_line(text)
