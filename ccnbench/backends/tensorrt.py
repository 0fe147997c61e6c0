"""Native TensorRT: an engine built from the ONNX artifact, cached on disk, run on torch CUDA tensors.

Written against NVIDIA's documented Python API for TensorRT 10.1+ and 11.x. Precision comes from
the ONNX graph: TensorRT 11 is always strongly typed and has no ``BuilderFlag.FP16``, so ccnbench
passes ``STRONGLY_TYPED`` on 10.x too and fp16 means the fp16 ONNX artifact on both. Only the
names-based I/O API is used (``num_io_tensors``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); the bindings API was removed in 10.0.

Three modules: ``tensorrt_compat`` (version shims and the import), ``tensorrt_build`` (engine
build and cache, one profile per batch size) and this one (the runner, which selects a batch's
profile before setting its input shape, and the backend).

``tensorrt`` is imported inside functions only: importing these modules must work, and must not
load TensorRT, on a machine without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ccnbench.backends.base import Backend, BuildOptions, Runner, Stopwatch, Target
from ccnbench.backends.tensorrt_build import (
    LoadedEngine,
    Profile,
    describe_io,
    load_or_build,
    profile_index,
    write_or_fail,
)
from ccnbench.backends.tensorrt_compat import (
    TensorRTError,
    engine_device_memory_bytes,
    import_tensorrt,
    torch_dtype,
)
from ccnbench.backends.torch_eager import cuda_unavailable_reason, warm_torch
from ccnbench.errors import CcnbenchError, UsageError

if TYPE_CHECKING:
    from ccnbench.formats.onnx_artifact import Artifact
    from ccnbench.source import ModelSource


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
    vendor_runtime = True
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
    write_or_fail(engine_out, loaded.path.read_bytes())
    write_or_fail(layers_out, loaded.layers_path.read_bytes())
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
