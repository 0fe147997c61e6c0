"""The measurements behind the roofs: one large GEMM per runtime family, and a STREAM-like
triad for memory. Each returns the rate of its fastest call in each of ``repeats`` timed
blocks (FLOP/s or bytes/s), so the spread over repeats is part of the answer.

The GEMM runs in the runtime that runs the case (its own kernels, its own threads), because a
compute roof is what *that* library can reach: MLAS, oneDNN and PyTorch's BLAS differ. Memory
bandwidth is the machine's, measured once per device and thread count with PyTorch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccnbench.deps import require

GEMM_SIZE = 1024  # 2.1 GFLOP a call: tens of ms on two CPU cores, well past any cache
# Three arrays of 64 MiB: larger than the last-level cache of the CPUs seen here (32 MiB per
# CCX on EPYC, under 110 MiB on the Xeons), so the triad streams from DRAM.
TRIAD_ELEMENTS = 16 * 2**20
TRIAD_SCALE = 3.0
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def gemm_flops(n: int = GEMM_SIZE) -> int:
    return 2 * n**3


def triad_bytes(elements: int, element_bytes: int = 4) -> int:
    """a = b + s·c reads two arrays and writes one (STREAM's count: no write-allocate)."""
    return 3 * elements * element_bytes


def fastest_rates(
    call: Callable[[], object], work: float, repeats: int, seconds: float, sync: Callable[[], None]
) -> list[float]:
    """``work`` per call over the fastest call of each of ``repeats`` blocks of ``seconds``."""
    call()  # the first call pays for allocation and kernel selection
    sync()
    rates = []
    for _ in range(repeats):
        best = float("inf")
        end = time.perf_counter() + seconds
        calls = 0
        # At least one call per block: a precision without fast kernels (fp16 GEMM on a CPU
        # without them) takes seconds a call, and its roof is still worth knowing.
        while calls < 1 or time.perf_counter() < end:
            start = time.perf_counter_ns()
            call()
            sync()
            best = min(best, (time.perf_counter_ns() - start) / 1e9)
            calls += 1
        rates.append(work / best)
    return rates


def _no_sync() -> None:
    return None


def _torch_sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else _no_sync


class _Threads:
    """PyTorch's intra-op threads set for the measurement and restored after it."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved)


def torch_gemm(device: str, precision: str, threads: int, repeats: int, seconds: float) -> list[float]:
    dtype = _DTYPES[precision]
    n = GEMM_SIZE if device == "cpu" else 8192  # a GPU needs a far larger GEMM to fill its SMs
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    with _Threads(threads), torch.no_grad():
        return fastest_rates(
            lambda: torch.mm(a, b, out=out), gemm_flops(n), repeats, seconds, _torch_sync(device)
        )


def triad(device: str, threads: int, repeats: int, seconds: float) -> list[float]:
    elements = TRIAD_ELEMENTS if device == "cpu" else 8 * TRIAD_ELEMENTS  # past a GPU's L2 too
    b = torch.ones(elements, device=device)
    c = torch.ones(elements, device=device)
    a = torch.empty(elements, device=device)
    with _Threads(threads), torch.no_grad():
        return fastest_rates(
            lambda: torch.add(b, c, alpha=TRIAD_SCALE, out=a),
            triad_bytes(elements),
            repeats,
            seconds,
            _torch_sync(device),
        )


def gemm_onnx(path: Path, precision: str, n: int = GEMM_SIZE) -> Path:
    """An ONNX file holding one MatMul of an n×n input by an n×n weight: in fp32 or fp16, or for
    an int8 precision (``int8-u8``, ``int8-s8``) the QDQ form the int8 files have, which the
    runtimes run as an integer GEMM (ONNX Runtime's QLinearMatMul, OpenVINO's int8 MatMul)."""
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if precision.startswith("int8"):
        nodes, initializers = _qdq_matmul(precision, n, rng)
        element = TensorProto.FLOAT
    elif precision in ("fp32", "fp16"):
        element = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}[precision]
        weight = rng.standard_normal((n, n)).astype(np.float16 if precision == "fp16" else np.float32)
        nodes, initializers = (
            [helper.make_node("MatMul", ["a", "w"], ["y"])],
            [numpy_helper.from_array(weight, "w")],
        )
    else:
        raise ValueError(f"no {precision} GEMM file: ccnbench's ONNX files are fp32, fp16 or int8")
    graph = helper.make_graph(
        nodes,
        "gemm",
        [helper.make_tensor_value_info("a", element, [n, n])],
        [helper.make_tensor_value_info("y", element, [n, n])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _qdq_matmul(precision: str, n: int, rng: np.random.Generator) -> tuple[list[Any], list[Any]]:
    """Quantize → dequantize around a MatMul with an s8 weight: activations u8 asymmetric
    (``int8-u8``) or s8 symmetric (``int8-s8``), as ccnbench's int8 files quantize them."""
    from onnx import helper, numpy_helper

    unsigned = precision.endswith("u8")
    dtype, zero = (np.uint8, 128) if unsigned else (np.int8, 0)
    weight = rng.integers(-127, 128, size=(n, n), dtype=np.int8)
    constants = {
        "a_scale": np.array(4.0 / 127, np.float32),
        "a_zero": np.array(zero, dtype),
        "w_q": weight,
        "w_scale": np.array(0.01, np.float32),
        "w_zero": np.array(0, np.int8),
        "y_scale": np.array(1.0, np.float32),
        "y_zero": np.array(zero, dtype),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["a", "a_scale", "a_zero"], ["a_q"]),
        helper.make_node("DequantizeLinear", ["a_q", "a_scale", "a_zero"], ["a_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"]),
        helper.make_node("MatMul", ["a_dq", "w_dq"], ["y_f"]),
        helper.make_node("QuantizeLinear", ["y_f", "y_scale", "y_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["y"]),
    ]
    return nodes, [numpy_helper.from_array(v, k) for k, v in constants.items()]


def _gemm_input(precision: str, n: int = GEMM_SIZE) -> np.ndarray:
    return (
        np.random.default_rng(1)
        .standard_normal((n, n))
        .astype(np.float16 if precision == "fp16" else np.float32)
    )


def onnxruntime_gemm(device: str, precision: str, threads: int, repeats: int, seconds: float) -> list[float]:
    if device != "cpu":
        raise ValueError("ONNX Runtime's GPU providers are read against the device's cuBLAS roof")
    ort = require("onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        path = gemm_onnx(Path(tmp) / "gemm.onnx", precision)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = _gemm_input(precision)
    return fastest_rates(lambda: session.run(None, {"a": x}), gemm_flops(), repeats, seconds, _no_sync)


def openvino_gemm(device: str, precision: str, threads: int, repeats: int, seconds: float) -> list[float]:
    if device != "cpu":
        raise ValueError("OpenVINO is measured on the CPU only")
    ov = require("openvino", extra="openvino")
    from ccnbench.backends.openvino import HINTS

    core = ov.Core()
    int8 = precision.startswith("int8")
    with tempfile.TemporaryDirectory() as tmp:
        # An int8 file's quantized MatMul runs in int8 whatever the hint; the hint sets the rest.
        model = core.read_model(str(gemm_onnx(Path(tmp) / "gemm.onnx", precision if int8 else "fp32")))
        compiled = core.compile_model(
            model,
            "CPU",
            {
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": HINTS["fp32" if int8 else precision],
            },
        )
    request = compiled.create_infer_request()
    x = _gemm_input("fp32")
    return fastest_rates(lambda: request.infer({0: x}), gemm_flops(), repeats, seconds, _no_sync)


GEMMS: dict[str, Callable[[str, str, int, int, float], list[float]]] = {
    "torch": torch_gemm,
    "onnxruntime": onnxruntime_gemm,
    "openvino": openvino_gemm,
}
