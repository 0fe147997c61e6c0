"""TensorRT version shims: pure functions of the ``tensorrt`` module object, and its import.

ccnbench is written against NVIDIA's documented Python API for TensorRT 10.1+ and 11.x; what
differs between those releases (strong typing, ``device_memory_size_v2``, DataType members) is
decided here, from the module object passed in, so it is testable without TensorRT. ``tensorrt``
itself is imported only by ``import_tensorrt``, inside the function.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

import torch

from ccnbench.deps import require
from ccnbench.errors import CcnbenchError, MissingDependency

# execute_async_v3 and the names-based I/O API exist from 10.0; device_memory_size_v2 from 10.1.
MIN_VERSION = (10, 1)


class TensorRTError(CcnbenchError):
    """TensorRT could not parse, build, load or run an engine; the message says which and why."""


def trt_version_tuple(trt: Any) -> tuple[int, ...]:
    """``trt.__version__`` as integers (``"10.13.3.9"`` -> ``(10, 13, 3, 9)``); (0,) if unreadable."""
    match = re.match(r"\d+(?:\.\d+)*", str(getattr(trt, "__version__", "")))
    return tuple(int(p) for p in match.group(0).split(".")) if match else (0,)


def check_supported_version(trt: Any) -> None:
    """Raise MissingDependency (with the upgrade line) when TensorRT is older than 10.1.

    10.1 is the floor because the runner needs ``execute_async_v3`` and the engine's
    ``device_memory_size_v2``; older releases would fail mid-run instead of here.
    """
    if trt_version_tuple(trt)[:2] < MIN_VERSION:
        version = getattr(trt, "__version__", "unknown")
        floor = ".".join(map(str, MIN_VERSION))
        raise MissingDependency(
            f"tensorrt {version} is older than {floor}, the oldest ccnbench supports "
            f"(it needs execute_async_v3 and device_memory_size_v2): pip install -U 'ccnbench[tensorrt]'"
        )


def network_creation_flags(trt: Any) -> int:
    """Flags for ``Builder.create_network``: strongly typed on every supported version.

    TensorRT 11 is always strongly typed (its ``STRONGLY_TYPED`` member is deprecated and
    ignored, so nothing is passed); on 10.x the flag gives the same semantics, so the precision
    of an engine is the precision of its ONNX graph on both. ``EXPLICIT_BATCH`` is never used:
    ignored since 10.0, gone in 11.
    """
    if trt_version_tuple(trt)[0] >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def engine_device_memory_bytes(engine: Any) -> int | None:
    """Device memory an execution context of ``engine`` needs, or None if it cannot be read.

    ``device_memory_size_v2`` exists from 10.1; ``device_memory_size`` is deprecated there and
    gone in 11, so it is only read when the newer property is missing.
    """
    for name in ("device_memory_size_v2", "device_memory_size"):
        value = getattr(engine, name, None)
        if value is not None:
            return int(value)
    return None


# TensorRT DataType member name -> torch dtype. Looked up by name so a build that lacks a member
# simply has no mapping for it.
_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


def torch_dtype(trt: Any, trt_dtype: Any) -> torch.dtype:
    """The torch dtype for a ``trt.DataType`` (for allocating outputs and checking inputs)."""
    for name, dtype in _TORCH_DTYPES.items():
        member = getattr(trt.DataType, name, None)
        if member is not None and member == trt_dtype:
            return dtype
    raise TensorRTError(f"engine tensor type {trt_dtype} has no torch equivalent ccnbench can allocate")


def import_tensorrt() -> ModuleType:
    """Import a supported TensorRT, or raise a CcnbenchError whose message says what to do."""
    try:
        trt = require("tensorrt", extra="tensorrt")
    except MissingDependency as exc:
        cause = exc.__cause__
        if isinstance(cause, ModuleNotFoundError) and cause.name == "tensorrt":
            raise
        raise _broken_install(cause or exc) from exc
    except Exception as exc:  # a present but broken install: missing libnvinfer, CUDA mismatch
        raise _broken_install(exc) from exc
    check_supported_version(trt)
    return trt


def _broken_install(exc: BaseException) -> TensorRTError:
    return TensorRTError(
        f"tensorrt is installed but cannot be imported ({type(exc).__name__}: {exc}); "
        f"reinstall it: pip install --force-reinstall 'ccnbench[tensorrt]'"
    )
