"""Native TensorRT: an engine built from the ONNX artifact, cached on disk, run on torch CUDA tensors.

Written against NVIDIA's documented Python API for TensorRT 10.1+ and 11.x. Precision comes from the ONNX graph: TensorRT 11 is always strongly
typed and has no ``BuilderFlag.FP16``, so ccnbench passes ``STRONGLY_TYPED`` on 10.x too and
fp16 means the fp16 ONNX artifact on both. Only the names-based I/O API is used
(``num_io_tensors``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); the
bindings API was removed in 10.0.

The engine has one optimization profile per requested batch size (min = opt = max = that
batch), and the runner selects a batch's profile before setting its input shape: TensorRT then
tunes its tactics for every measured shape, as cuDNN and ONNX Runtime do, instead of running
batch 1 on tactics chosen for the largest batch. Engines are cached under
``<artifacts>/tensorrt/`` keyed by everything that changes the plan; a timing cache per
TensorRT version and GPU makes rebuilds of other profiles cheaper.

``tensorrt`` is imported inside functions only: importing this module must work, and must not
load TensorRT, on a machine without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ccnbench import fileio
from ccnbench.backends.base import Backend, BuildOptions, Runner, Stopwatch, Target
from ccnbench.backends.torch_eager import cuda_unavailable_reason, warm_torch
from ccnbench.deps import require
from ccnbench.errors import CcnbenchError, MissingDependency, UsageError

if TYPE_CHECKING:
    from ccnbench.export import Artifact
    from ccnbench.source import ModelSource

# execute_async_v3 and the names-based I/O API exist from 10.0; device_memory_size_v2 from 10.1.
MIN_VERSION = (10, 1)
_INSTALL = "pip install 'ccnbench[tensorrt]'"
_CACHE_DIR = "tensorrt"
# Bumped when anything ccnbench sets on the builder changes, so old cached engines are not reused.
_KEY_SCHEMA = 2  # 2: one profile per batch size
_log = logging.getLogger(__name__)


class TensorRTError(CcnbenchError):
    """TensorRT could not parse, build, load or run an engine; the message says which and why."""


# --- version gating: pure functions of the ``tensorrt`` module object ---------------------------


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


# --- build ---------------------------------------------------------------------------------------


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
    _write(timing_cache_path, bytes(config.get_timing_cache().serialize()))
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
            _write(path, plan)
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                errors = "; ".join(logger.errors) or "see TensorRT's log"
                raise TensorRTError(f"TensorRT could not deserialise the engine it just built: {errors}")
    if not cache_hit or not layers_path.is_file():
        inspector = engine.create_engine_inspector()
        _write(layers_path, inspector.get_engine_information(trt.LayerInformationFormat.JSON).encode())
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


def _write(path: Path, data: bytes) -> None:
    try:
        fileio.write_bytes(path, data)
    except OSError as exc:
        raise TensorRTError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --- run -----------------------------------------------------------------------------------------


@dataclass
class TensorRTRunner(Runner):
    """An execution context on its own non-default stream, bound to torch tensors by address.

    Addresses and shapes are set only when the input tensors change, so the timed call (the
    same staged tensors every iteration) is ``execute_async_v3`` alone. Output buffers are
    allocated once per input shape and reused, as the Runner contract allows.
    """

    engine: Any = None
    context: Any = None
    input_names: tuple[str, ...] = ()
    tensor_dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    _loaded: LoadedEngine | None = None
    _stream: Any = None
    profiles: tuple[Profile, ...] = ()
    _profile: int | None = None  # the profile selected on the context
    _bound: tuple[tuple[int, tuple[int, ...]], ...] = ()
    _staged: tuple[Tensor, ...] = ()
    _outputs: dict[tuple[tuple[int, ...], ...], tuple[Tensor, ...]] = field(default_factory=dict)

    @property
    def stream(self) -> torch.cuda.Stream | None:
        return self._stream

    @property
    def input_dtype(self) -> torch.dtype:
        """The engine's own input type: float16 for an fp16-I/O artifact, else float32."""
        return (
            self.tensor_dtypes.get(self.input_names[0], torch.float32) if self.input_names else torch.float32
        )

    def infer(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if self.context is None or self._stream is None:
            raise TensorRTError("the TensorRT runner is closed")
        if len(inputs) != len(self.input_names):
            raise UsageError(f"the engine takes {len(self.input_names)} inputs, got {len(inputs)}")
        staged = tuple(self._stage(name, x) for name, x in zip(self.input_names, inputs))
        # The inputs (and any cast above) were produced on the caller's stream: order after them.
        self._stream.wait_stream(torch.cuda.current_stream())
        identity = tuple((x.data_ptr(), tuple(x.shape)) for x in staged)
        if identity != self._bound:
            self._bound = ()  # a bind that fails halfway must not look complete on the next call
            self._bind(staged)
            self._bound = identity
        self._staged = staged  # keeps cast copies alive while the engine reads them
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise TensorRTError("execute_async_v3 failed; see TensorRT's log")
        # As for every runner, the caller synchronises with ``stream`` before reading the outputs.
        return self._outputs[tuple(s for _, s in identity)]

    def _stage(self, name: str, x: Tensor) -> Tensor:
        if not x.is_cuda:
            raise TensorRTError(f"input {name} is on {x.device}; the TensorRT runner takes CUDA tensors")
        want = self.tensor_dtypes[name]
        if x.dtype == want and x.is_contiguous():
            return x
        x = x.to(dtype=want, memory_format=torch.contiguous_format)
        x.record_stream(self._stream)  # its memory is not reused while the engine may still read it
        return x

    def _bind(self, staged: tuple[Tensor, ...]) -> None:
        context = self.context
        if self.profiles:  # an engine with dynamic inputs: select the batch's profile first
            index = profile_index(self.profiles, int(staged[0].shape[0]))
            if index != self._profile:
                # Documented order: select the profile (on the stream that runs it), then set shapes.
                if not context.set_optimization_profile_async(index, self._stream.cuda_stream):
                    raise TensorRTError(f"TensorRT could not select optimization profile {index}")
                self._profile = index
        for name, x in zip(self.input_names, staged):
            shape = tuple(int(d) for d in x.shape)
            if not context.set_input_shape(name, shape):
                raise TensorRTError(
                    f"input {name} of shape {shape} is outside the engine's profile "
                    f"(batches {self.details.get('profiles')}); prepare with that batch size"
                )
            if not context.set_tensor_address(name, x.data_ptr()):
                raise TensorRTError(f"TensorRT rejected the address of input {name}")
        key = tuple(tuple(x.shape) for x in staged)
        if key not in self._outputs:
            self._outputs[key] = self._allocate_outputs()
        for name, y in zip(self.output_names, self._outputs[key]):
            if not context.set_tensor_address(name, y.data_ptr()):
                raise TensorRTError(f"TensorRT rejected the address of output {name}")

    def _allocate_outputs(self) -> tuple[Tensor, ...]:
        outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TensorRTError(f"output {name} has unresolved shape {shape} after setting the inputs")
            outputs.append(torch.empty(shape, dtype=self.tensor_dtypes[name], device="cuda"))
        return tuple(outputs)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()  # nothing may still run when the context goes
        self._outputs.clear()
        self._staged = ()
        self._bound = ()
        self._profile = None
        self.context = None  # before the engine, as TensorRT requires
        self.engine = None
        self._loaded = None
        self._stream = None


def create_runner(trt: Any, target: Target, artifact: Artifact, loaded: LoadedEngine) -> TensorRTRunner:
    """A runner on ``loaded``'s engine, with its I/O checked against the artifact's."""
    engine = loaded.engine
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
    outputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}
    if inputs != set(artifact.input_names) or outputs != set(artifact.output_names):
        raise TensorRTError(
            f"engine I/O {sorted(inputs)} -> {sorted(outputs)} does not match the ONNX graph's "
            f"{list(artifact.input_names)} -> {list(artifact.output_names)}"
        )
    dtypes = {n: torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
    context = engine.create_execution_context()
    if context is None:
        raise TensorRTError("TensorRT could not create an execution context (out of device memory?)")
    details: dict[str, Any] = {
        "engine": str(loaded.path),
        "engine_cache_hit": loaded.cache_hit,
        "tensorrt": str(trt.__version__),
        "gpu": loaded.gpu,
        "profiles": ",".join(str(p[1]) for p in loaded.profiles),
        "engine_device_memory_bytes": engine_device_memory_bytes(engine),
        "io_tensors": describe_io(trt, engine),
        "layers": str(loaded.layers_path),
        "num_layers": int(engine.num_layers),
        "strongly_typed": True,
    }
    return TensorRTRunner(
        target,
        artifact.output_names,
        details=details,
        engine=engine,
        context=context,
        input_names=artifact.input_names,
        tensor_dtypes=dtypes,
        # Engines without dynamic inputs have only the implicit profile 0: nothing to select.
        profiles=loaded.profiles if engine.num_optimization_profiles > 1 else (),
        _loaded=loaded,
        _stream=torch.cuda.Stream(),
    )


class TensorRTBackend(Backend):
    name = "tensorrt"
    devices = ("cuda",)
    needs_onnx = True
    ships_as = "TensorRT engine"
    description = "TensorRT engine built from the ONNX artifact (strongly typed), run with execute_async_v3"

    def precisions(self, device: str) -> tuple[str, ...]:
        return ("fp32", "fp16")

    def availability(self, device: str) -> str | None:
        if device not in self.devices:
            return f"tensorrt runs on cuda only, not {device}"
        try:
            import_tensorrt()
        except CcnbenchError as exc:
            return str(exc)
        return cuda_unavailable_reason()

    def warm(self, device: str, options: BuildOptions) -> None:
        """The CUDA context and torch's handles, and TensorRT's library with one runtime object."""
        warm_torch("cuda", options.threads)
        trt = import_tensorrt()
        trt.Runtime(trt.Logger(trt.Logger.ERROR))

    def prepare(self, source: ModelSource, target: Target, options: BuildOptions) -> Runner:
        if options.precision not in self.precisions(target.device):
            raise UsageError(f"tensorrt runs fp32 or fp16 ONNX graphs, not {options.precision}")
        reason = self.availability(target.device)
        if reason:
            raise TensorRTError(reason)
        trt = import_tensorrt()
        # Exporting is the artifact's cost (recorded with it), shared by every ONNX target.
        artifact = source.artifact(options.precision, options.io, options.opset, options.artifacts_dir)
        loaded = load_or_build(trt, artifact, options)
        with Stopwatch() as sw:
            runner = create_runner(trt, target, artifact, loaded)
        runner.build_seconds = loaded.seconds + sw.seconds
        runner.details["tf32"] = options.precision != "fp32"  # cleared for fp32, TensorRT's default else
        return runner


def export_engine(artifact: Artifact, options: BuildOptions) -> dict[str, Any]:
    """Build (or reuse) the engine of ``artifact`` and save it beside the ONNX file.

    Writes ``<stem>.engine`` and ``<stem>.layers.json`` next to ``artifact.path`` (for
    ``ccnbench export --engine``), so a user gets a deployable plan and its fused-layer listing.
    """
    reason = TensorRTBackend().availability("cuda")
    if reason:
        raise TensorRTError(reason)
    trt = import_tensorrt()
    loaded = load_or_build(trt, artifact, options)
    engine_out = artifact.path.with_suffix(".engine")
    layers_out = artifact.path.with_suffix(".layers.json")
    _write(engine_out, loaded.path.read_bytes())
    _write(layers_out, loaded.layers_path.read_bytes())
    return {
        "engine": str(engine_out),
        "layers": str(layers_out),
        "size_bytes": engine_out.stat().st_size,
        "build_seconds": round(loaded.seconds, 4),
        "cache_hit": loaded.cache_hit,
        "tensorrt": str(trt.__version__),
        "gpu": loaded.gpu,
        "profiles": ",".join(str(p[1]) for p in loaded.profiles),
        "engine_device_memory_bytes": engine_device_memory_bytes(loaded.engine),
    }
