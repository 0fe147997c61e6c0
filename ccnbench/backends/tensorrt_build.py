"""TensorRT engines: built from an ONNX artifact and cached on disk, keyed by everything that changes the plan.

The engine has one optimization profile per requested batch size (min = opt = max = that
batch): TensorRT then tunes its tactics for every measured shape, as cuDNN and ONNX Runtime do,
instead of running batch 1 on tactics chosen for the largest batch. Engines are cached under
``<artifacts>/tensorrt/``; a timing cache per TensorRT version and GPU makes rebuilds of other
profiles cheaper. Every TensorRT object comes in as an argument (``trt`` is the module).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ccnbench import fileio
from ccnbench.backends.base import BuildOptions, Stopwatch
from ccnbench.backends.tensorrt_compat import TensorRTError, network_creation_flags
from ccnbench.errors import UsageError

if TYPE_CHECKING:
    from ccnbench.formats.onnx_artifact import Artifact

_CACHE_DIR = "tensorrt"
# Bumped when anything ccnbench sets on the builder changes, so old cached engines are not reused.
_KEY_SCHEMA = 2  # 2: one profile per batch size
_log = logging.getLogger(__name__)

Profile = tuple[int, int, int]  # (min, opt, max) batch


def batch_profiles(batch_sizes: Sequence[int]) -> tuple[Profile, ...]:
    """One (min, opt, max) = (b, b, b) profile per distinct batch size, smallest first; the
    profile's index in this tuple is its index in the engine."""
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise UsageError(f"TensorRT needs positive batch sizes for its profiles, got {tuple(batch_sizes)}")
    return tuple((b, b, b) for b in sorted({int(b) for b in batch_sizes}))


def profile_index(profiles: Sequence[Profile], batch: int) -> int:
    """The index of the profile that covers ``batch`` (the first, as profiles do not overlap)."""
    for i, (lo, _, hi) in enumerate(profiles):
        if lo <= batch <= hi:
            return i
    batches = ", ".join(str(p[1]) for p in profiles)
    raise TensorRTError(f"batch {batch} has no optimization profile (built for {batches}); prepare with it")


def engine_key(
    onnx_sha256: str,
    trt_version: str,
    gpu: str,
    profiles: Sequence[Profile],
    options: BuildOptions,
) -> str:
    """Hex key of everything that changes the plan; an engine is reused only under the same key."""
    fields = {
        "schema": _KEY_SCHEMA,
        "onnx_sha256": onnx_sha256,
        "tensorrt": trt_version,
        "gpu": gpu,
        "profiles": [list(p) for p in profiles],
        "precision": options.precision,
        "builder_optimization_level": options.builder_optimization_level,
        "workspace_mib": options.workspace_mib,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def format_parser_errors(parser: Any, onnx_path: Path) -> str:
    """Every error the ONNX parser recorded, on one line: index, code, description, node, operator.

    ``node_name()`` and ``node_operator()`` exist on ``ParserError`` from 10.0, below our floor.
    """
    count = parser.num_errors
    parts = []
    for i in range(count):
        error = parser.get_error(i)
        node = f"node {error.node()}"
        if error.node_name():
            node += f" {error.node_name()!r}"
        if error.node_operator():
            node += f" ({error.node_operator()})"
        parts.append(f"#{i} {error.code()}: {error.desc()} [{node}]")
    detail = "; ".join(parts) if parts else "the parser recorded no error"
    return f"TensorRT's ONNX parser rejected {onnx_path.name} ({count} error(s)): {detail}"


def add_batch_profiles(builder: Any, network: Any, config: Any, profiles: Sequence[Profile]) -> list[str]:
    """Add one optimization profile per entry of ``profiles``, each giving every input with a
    dynamic dimension its batch range; return those inputs' names.

    Only the batch (first) dimension may be dynamic: a convolution's channel count and
    ccnbench's spatial sizes are fixed, so any other dynamic dimension is an error here rather
    than a confusing build failure. With no dynamic input no profile is added.
    """
    dynamic: dict[str, tuple[int, ...]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        if not shape or any(d < 0 for d in shape[1:]):
            raise TensorRTError(
                f"input {tensor.name} has shape {shape}: only the batch (first) dimension may be dynamic"
            )
        dynamic[tensor.name] = shape[1:]
    if not dynamic:
        return []
    for lo, opt, hi in profiles:
        optimization_profile = builder.create_optimization_profile()
        for name, rest in dynamic.items():
            optimization_profile.set_shape(name, (lo, *rest), (opt, *rest), (hi, *rest))
        config.add_optimization_profile(optimization_profile)
    return list(dynamic)


def build_serialized_engine(
    trt: Any, logger: Any, onnx_path: Path, options: BuildOptions, timing_cache_path: Path
) -> bytes:
    """Parse the ONNX file and build a serialized engine (a plan), updating the timing cache.

    Nothing here sets a precision: the network is strongly typed and the ONNX graph's types are
    the engine's types. TF32 is cleared for fp32 so fp32 means fp32, as on the torch targets
    (it is on by default in TensorRT and would round convolution inputs to 10-bit mantissas).
    """
    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise TensorRTError(format_parser_errors(parser, onnx_path))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib * 2**20)
    config.builder_optimization_level = options.builder_optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # full layer information
    if options.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    add_batch_profiles(builder, network, config, batch_profiles(options.batch_sizes))

    previous = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    cache = config.create_timing_cache(previous)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another device or build is rejected, not trusted: start an empty one.
        _log.warning("TensorRT rejected the timing cache %s; starting a new one", timing_cache_path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errors = "; ".join(getattr(logger, "errors", ())) or "see TensorRT's log"
        raise TensorRTError(f"TensorRT could not build an engine from {onnx_path.name}: {errors}")
    write_or_fail(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


_PROCESS_LOGGER: Any = None


def process_logger(trt: Any) -> Any:
    """This process's one TensorRT logger: TensorRT keeps the first logger it is given for the
    whole process, so a second one (a second engine in a ``model``-isolated worker) would never
    receive messages and its error list would stay empty."""
    global _PROCESS_LOGGER
    if _PROCESS_LOGGER is None:
        _PROCESS_LOGGER = make_logger(trt)
    return _PROCESS_LOGGER


def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards warnings to Python logging and keeps errors for messages.

    ``build_serialized_network`` only returns None on failure; the reason is in the log, so the
    errors are kept to put in the exception a user sees (the worker's stderr may be gone).
    Use ``process_logger``; this builds a new one.
    """

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # documented requirement for Python ILogger subclasses
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                _log.warning("TensorRT: %s", msg)

    return _Logger()


@dataclass
class LoadedEngine:
    """A deserialized engine and where it came from. Holds the runtime and logger it needs alive."""

    engine: Any
    runtime: Any
    logger: Any
    path: Path
    layers_path: Path
    cache_hit: bool
    seconds: float
    gpu: str
    profiles: tuple[Profile, ...]


def gpu_identity() -> str:
    """The current CUDA device as name and compute capability; part of every cache key."""
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} sm{major}{minor}"


def load_or_build(trt: Any, artifact: Artifact, options: BuildOptions) -> LoadedEngine:
    """The engine for ``artifact`` under ``options``: from the cache when its key matches, else built.

    ``seconds`` is the cost of getting a usable engine (deserialising a cached plan, or parsing,
    building, saving and deserialising a new one). The layer information is written beside the
    engine as JSON; it is complete because the build used DETAILED profiling verbosity.
    """
    profiles = batch_profiles(options.batch_sizes)
    gpu = gpu_identity()
    version = str(trt.__version__)
    key = engine_key(artifact.sha256, version, gpu, profiles, options)
    cache_dir = Path(options.artifacts_dir) / _CACHE_DIR
    path = cache_dir / f"{artifact.path.stem}-{key[:16]}.engine"
    layers_path = path.with_suffix(".layers.json")
    timing_cache = cache_dir / f"timing-{version}-{_slug(gpu)}.cache"
    logger = process_logger(trt)
    logger.errors.clear()
    runtime = trt.Runtime(logger)
    with Stopwatch() as sw:
        engine = runtime.deserialize_cuda_engine(path.read_bytes()) if path.is_file() else None
        cache_hit = engine is not None  # an unreadable cached plan is rebuilt, not trusted
        if engine is None:
            logger.errors.clear()  # a rejected cached plan's errors are not the build's
            plan = build_serialized_engine(trt, logger, artifact.path, options, timing_cache)
            write_or_fail(path, plan)
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                errors = "; ".join(logger.errors) or "see TensorRT's log"
                raise TensorRTError(f"TensorRT could not deserialise the engine it just built: {errors}")
    if not cache_hit or not layers_path.is_file():
        inspector = engine.create_engine_inspector()
        write_or_fail(layers_path, inspector.get_engine_information(trt.LayerInformationFormat.JSON).encode())
    return LoadedEngine(engine, runtime, logger, path, layers_path, cache_hit, sw.seconds, gpu, profiles)


def describe_io(trt: Any, engine: Any) -> list[str]:
    """The engine's I/O tensors as built: name, direction, TensorRT type, shape (-1 = dynamic), profile."""
    described = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        shape = tuple(engine.get_tensor_shape(name))
        text = f"{name} {_enum_name(mode)} {_enum_name(engine.get_tensor_dtype(name))} {shape}"
        if mode == trt.TensorIOMode.INPUT and -1 in shape:  # only dynamic inputs are in the profiles
            for index in range(engine.num_optimization_profiles):
                lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(name, index))
                text += f" profile {index} min={lo} opt={opt} max={hi}"
        described.append(text)
    return described


def _enum_name(value: Any) -> str:
    return str(getattr(value, "name", value))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def write_or_fail(path: Path, data: bytes) -> None:
    """Write atomically; a failure is a TensorRTError naming the file."""
    try:
        fileio.write_bytes(path, data)
    except OSError as exc:
        raise TensorRTError(f"cannot write {path}: {exc.strerror or exc}") from exc
