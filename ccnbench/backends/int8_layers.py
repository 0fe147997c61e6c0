"""Which layers a runtime really ran in int8, read from the runtime itself (not from the file).

A QDQ file only says where int8 is allowed: ONNX Runtime fuses a DequantizeLinear -> Conv ->
QuantizeLinear pattern into ``QLinearConv`` when it has a kernel for it, and otherwise runs the
Conv in float between the Q/DQ pairs; OpenVINO turns Q/DQ pairs into FakeQuantize and runs a
convolution in int8 when its low-precision transformations apply. So each int8 case records:

- ONNX Runtime: the op types of the session's optimized graph (``optimized_model_filepath``),
  split into integer kernels (``QLinear*``, ``QGemm``, ``*Integer``) and float compute left;
- OpenVINO: each runtime-model op's ``rt_info`` (``layerType``, ``runtimePrecision``,
  ``primitiveType``), split the same way.

``ran_int8`` is False when no compute layer ran in int8: such a case fails (it is a float file
with extra nodes), it is never reported as int8.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from ccnbench.formats.int8 import ORT_INT8_PREFIXES

# Float compute an int8 file could have run in int8 (what "did not run in int8" counts).
_ORT_FLOAT_COMPUTE = ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "NchwcConv")
_OV_COMPUTE = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")
_OV_INT8 = ("i8", "u8")


def ort_layers(ort: Any, path: Path, threads: int | None) -> dict[str, Any]:
    """The integer and float compute ops of ONNX Runtime's optimized graph for ``path`` (CPU)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="ccnbench-ort-int8-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        ops = Counter(
            n.op_type for n in onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node
        )
    return summary(
        {op: n for op, n in ops.items() if op.startswith(ORT_INT8_PREFIXES)},
        {op: n for op, n in ops.items() if op in _ORT_FLOAT_COMPUTE},
        "optimized graph",
    )


def openvino_layers(compiled: Any) -> dict[str, Any]:
    """The compute layers of OpenVINO's runtime model by the precision they ran in, and the
    int8 kernels (``primitiveType``) they used."""
    int8: Counter[str] = Counter()
    floats: Counter[str] = Counter()
    kernels: set[str] = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer, precision, kernel = (
            str(info[k].astype(str)) if k in info else ""
            for k in ("layerType", "runtimePrecision", "primitiveType")
        )
        if layer not in _OV_COMPUTE:
            continue
        if precision in _OV_INT8:
            int8[layer] += 1
            kernels.add(kernel)
        else:
            floats[f"{layer} ({precision})"] += 1
    return summary(dict(int8), dict(floats), "runtime model rt_info") | {"int8_kernels": sorted(kernels)}


def summary(int8: dict[str, int], floats: dict[str, int], source: str) -> dict[str, Any]:
    return {"ran_int8": bool(int8), "int8_layers": int8, "float_layers": floats, "read_from": source}


def as_details(layers: dict[str, Any]) -> dict[str, Any]:
    """The case's details (flat: a case's details hold scalars and lists of strings)."""
    return {
        "int8_ran": layers["ran_int8"],
        "int8_layers": [f"{op} x{n}" for op, n in layers["int8_layers"].items()],
        "int8_float_layers": [f"{op} x{n}" for op, n in layers["float_layers"].items()],
        "int8_kernels": list(layers.get("int8_kernels", [])),
        "int8_read_from": layers["read_from"],
    }


def nothing_in_int8(name: str, runtime: str, layers: dict[str, Any]) -> str:
    floats = ", ".join(f"{n} {op}" for op, n in layers["float_layers"].items()) or "none"
    return f"{runtime} ran no layer of {name} in int8 (float compute: {floats}): not an int8 case"
