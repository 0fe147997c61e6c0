"""ONNX Runtime on the CPU, on CUDA, and through its TensorRT execution provider.

Inputs and outputs are bound to the tensors' own memory (I/O binding), so no copy happens
inside the timed call on any device. On CUDA the session runs on the runner's own stream
(``user_compute_stream``), so CUDA events recorded on that stream time exactly its kernels.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ccnbench.backends.base import Backend, BuildOptions, Runner, Stopwatch, Target
from ccnbench.backends.int8_layers import as_details, nothing_in_int8, ort_layers
from ccnbench.backends.torch_eager import cuda_unavailable_reason, warm_torch
from ccnbench.deps import require
from ccnbench.errors import CcnbenchError, one_line
from ccnbench.formats.int8 import INT8_PRECISIONS, is_int8
from ccnbench.formats.onnx_export import tiny_conv_onnx

if TYPE_CHECKING:
    from ccnbench.source import ModelSource

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_GPU_HINT = "pip uninstall -y onnxruntime && pip install 'ccnbench[gpu]'"
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16}


def provider_unavailable_reason(device: str) -> str | None:
    try:
        ort = require("onnxruntime")
    except CcnbenchError as exc:
        return str(exc)
    provider = PROVIDERS[device]
    available = ort.get_available_providers()
    if provider not in available:
        if device == "tensorrt":
            return f"onnxruntime has no TensorrtExecutionProvider: {_GPU_HINT}, plus TensorRT's libraries"
        return f"onnxruntime {ort.__version__} has no {provider}: {_GPU_HINT}"
    if device != "cpu":
        return cuda_unavailable_reason()  # device tensors are torch CUDA tensors
    return None


def session_providers(
    target: Target, options: BuildOptions, stream: Any, shapes: dict[str, str], batch: int | None = None
) -> list[Any]:
    """The provider list for a target. Pure, so it is testable without a GPU."""
    if target.device == "cpu":
        return ["CPUExecutionProvider"]
    stream_ptr = str(stream.cuda_stream) if stream is not None else None
    cuda: dict[str, Any] = {
        "device_id": str(torch.cuda.current_device() if torch.cuda.is_available() else 0),
        "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
        # The CUDA provider enables TF32 by default; fp32 must mean fp32, as on the torch targets.
        "use_tf32": "0" if options.precision == "fp32" else "1",
        # The arena grows by what is asked, not to the next power of two, so the memory a case
        # reports is what the model needs (and it compares with the torch targets' figure).
        "arena_extend_strategy": "kSameAsRequested",
    }
    if stream_ptr:
        cuda["user_compute_stream"] = stream_ptr
    if target.device == "cuda":
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    cache = str(tensorrt_cache_dir(options, batch))
    trt: dict[str, Any] = {
        "device_id": cuda["device_id"],
        # Precision comes from the artifact (an fp16 graph for fp16), as for native TensorRT.
        "trt_fp16_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": cache,
        "trt_max_workspace_size": str(options.workspace_mib * 2**20),
        "trt_builder_optimization_level": str(options.builder_optimization_level),
        **shapes,
    }
    if stream_ptr:
        trt["user_compute_stream"] = stream_ptr
    return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]


def tensorrt_cache_dir(options: BuildOptions, batch: int | None) -> Path:
    """Engine and timing caches of the TensorRT provider; one folder per batch, since each batch
    has its own session and profile and a shared cache file would be rebuilt over and over."""
    base = Path(options.artifacts_dir) / "ort-tensorrt"
    return base / f"batch-{batch}" if batch is not None else base


def profile_shapes(
    input_names: Sequence[str], input_shape: Sequence[int], batch_sizes: Sequence[int]
) -> dict[str, str]:
    """TensorRT provider profile options: all three or none, ``name:BxCxDxHxW`` comma lists.

    ccnbench passes one batch size at a time (min = opt = max), one session per batch, so the
    provider tunes for each measured shape as native TensorRT does with a profile per batch.
    """

    def shapes(batch: int) -> str:
        return ",".join(f"{n}:{'x'.join(map(str, (batch, *input_shape)))}" for n in input_names)

    return {
        "trt_profile_min_shapes": shapes(min(batch_sizes)),
        "trt_profile_opt_shapes": shapes(max(batch_sizes)),
        "trt_profile_max_shapes": shapes(max(batch_sizes)),
    }


# ORT's run-options key (onnxruntime_run_options_config_keys.h): skip the CUDA provider's stream
# synchronisation at the end of every run (its OnRunEnd), so ORT is timed with the same pipelining
# as the torch and TensorRT runners; the session already runs on the runner's stream.
NO_SYNC_KEY = "disable_synchronize_execution_providers"
# ORT's session-options key (onnxruntime_session_options_config_keys.h): creating the session fails
# when a node would land on the CPU provider, instead of silently running it there.
NO_CPU_FALLBACK_KEY = "session.disable_cpu_ep_fallback"
_CPU_FALLBACK_ERROR = "fallback to CPU EP has been explicitly disabled"


def run_options(ort: Any, target: Target) -> Any:
    """The RunOptions of every run: on CUDA, no synchronisation at the end of a run (the caller
    synchronises the runner's stream before reading outputs, as for every other runner)."""
    options = ort.RunOptions()
    if target.is_cuda:
        options.add_run_config_entry(NO_SYNC_KEY, "1")
    return options


def uses_tf32(target: Target, precision: str) -> bool:
    """Whether fp32 convolutions may run as TF32. The CUDA provider has a switch (``use_tf32``,
    off for fp32); the TensorRT provider has none and TensorRT enables TF32 by default, so only
    ``NVIDIA_TF32_OVERRIDE=0`` in the worker's environment from its start (scripts/gpu_check.sh
    sets it) turns it off there."""
    if precision != "fp32":
        return True
    if target.device == "tensorrt":
        return os.environ.get("NVIDIA_TF32_OVERRIDE") != "0"
    return False


def session_options(
    ort: Any,
    target: Target,
    threads: int | None,
    cpu_fallback: bool = False,
    profile_prefix: str | None = None,
) -> Any:
    so = ort.SessionOptions()
    # Same intra-op thread count as torch on the CPU; one inter-op thread (a sequential graph).
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if target.is_cuda and not cpu_fallback:
        so.add_session_config_entry(NO_CPU_FALLBACK_KEY, "1")
    if profile_prefix:
        so.enable_profiling = True  # one Chrome-trace event per node run, read by ccnbench explain
        so.profile_file_prefix = profile_prefix
        # The graph after ORT's fusions: which of the file's nodes each profiled node now covers.
        so.optimized_model_filepath = optimized_model_path(profile_prefix)
    return so


@dataclass
class OrtRunner(Runner):
    session: Any = None
    input_names: tuple[str, ...] = ()
    io_dtype: torch.dtype = torch.float32
    _stream: Any = None
    _binding: Any = None
    _run_options: Any = None
    # TensorRT provider: one session per batch size, each with its own profile (see prepare).
    sessions: dict[int, Any] = field(default_factory=dict)
    _bound_inputs: tuple[Any, ...] = ()
    _outputs: dict[tuple[int, ...], tuple[Tensor, ...]] = field(default_factory=dict)

    @property
    def stream(self) -> torch.cuda.Stream | None:
        return self._stream

    @property
    def input_dtype(self) -> torch.dtype:
        return self.io_dtype

    def infer(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if self.session is None:
            raise CcnbenchError("runner is closed")
        if self._stream is not None:
            self._stream.wait_stream(torch.cuda.current_stream())
        if self.sessions:
            batch = int(inputs[0].shape[0])
            if batch not in self.sessions:
                raise CcnbenchError(f"no TensorRT provider session for batch {batch}; prepare with it")
            self.session = self.sessions[batch]  # a new batch is a new shape: it is rebound below
        # Rebinding is skipped when the same tensors come back (the timing loop), so the timed
        # call is the session run alone.
        identity = tuple((x.data_ptr(), tuple(x.shape)) for x in inputs)
        if identity != self._bound_inputs:
            self._bind(inputs)
            self._bound_inputs = identity
        self.session.run_with_iobinding(self._binding, self._run_options)
        return self._outputs[identity[0][1]]

    def _bind(self, inputs: Sequence[Tensor]) -> None:
        device_type, device_id = self._device()
        binding = self.session.io_binding()
        for name, x in zip(self.input_names, inputs):
            if not x.is_contiguous() or x.dtype != self.io_dtype or x.device.type != device_type:
                raise CcnbenchError(
                    f"input {name} must be a contiguous {self.io_dtype} tensor on {device_type}"
                )
            binding.bind_input(name, device_type, device_id, _NUMPY[x.dtype], list(x.shape), x.data_ptr())
        key = tuple(inputs[0].shape)
        if key not in self._outputs:
            self._outputs[key] = self._allocate_outputs(binding, device_type)
        for name, y in zip(self.output_names, self._outputs[key]):
            binding.bind_output(name, device_type, device_id, _NUMPY[y.dtype], list(y.shape), y.data_ptr())
        self._binding = binding

    def _allocate_outputs(self, binding: Any, device_type: str) -> tuple[Tensor, ...]:
        """Output shapes of a new batch size from one run with ORT-allocated outputs."""
        for name in self.output_names:
            binding.bind_output(name, device_type)
        self.session.run_with_iobinding(binding)
        shapes = [tuple(v.shape()) for v in binding.get_outputs()]
        binding.clear_binding_outputs()
        dtype = self.io_dtype
        return tuple(torch.empty(s, dtype=dtype, device=device_type) for s in shapes)

    def _device(self) -> tuple[str, int]:
        if self.target.is_cuda:
            return "cuda", torch.cuda.current_device()
        return "cpu", 0

    def close(self) -> None:
        self._binding = None
        self.session = None
        self.sessions.clear()
        self._outputs.clear()


class OrtBackend(Backend):
    name = "ort"
    devices = ("cpu", "cuda", "tensorrt")
    needs_onnx = True
    description = "ONNX Runtime with I/O binding (CPU, CUDA, TensorRT execution providers)"

    def precisions(self, device: str) -> tuple[str, ...]:
        # int8 QDQ files are measured on the CPU only; the GPU providers' int8 paths are untested.
        return ("fp32", "fp16", *INT8_PRECISIONS) if device == "cpu" else ("fp32", "fp16")

    def availability(self, device: str) -> str | None:
        return provider_unavailable_reason(device)

    def warm(self, device: str, options: BuildOptions) -> None:
        """Import ONNX Runtime and run a one-Conv session on the device: its provider library, its
        own cuDNN/cuBLAS handles and (through torch) the CUDA context are loaded before any
        member's baseline. The session and its arena are freed again."""
        ort = require("onnxruntime")
        target = Target(self.name, device)
        if target.is_cuda:
            warm_torch("cuda", options.threads)
            if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21: torch is imported, use its CUDA/cuDNN
                ort.preload_dlls()
        stream = torch.cuda.Stream() if target.is_cuda else None
        # The TensorRT provider's engine build is no one-time cost: warm its CUDA provider only.
        plain = Target(self.name, "cuda") if target.is_cuda else target
        providers = session_providers(plain, options, stream, {})
        session = ort.InferenceSession(
            tiny_conv_onnx(),
            sess_options=session_options(ort, target, options.threads, True),
            providers=providers,
        )
        session.run(None, {"x": np.ones((1, 2, 6, 6, 6), dtype=np.float32)})
        del session
        if target.is_cuda:
            torch.cuda.synchronize()

    def prepare(self, source: ModelSource, target: Target, options: BuildOptions) -> Runner:
        ort = require("onnxruntime")
        # Exporting is the artifact's cost (recorded with it), shared by every ONNX target.
        artifact = source.artifact(options.precision, options.io, options.opset, options.artifacts_dir)
        with Stopwatch() as sw:
            stream = torch.cuda.Stream() if target.is_cuda else None
            sessions: dict[int, Any] = {}
            if target.device == "tensorrt":
                for batch in sorted(set(options.batch_sizes)):
                    shapes = profile_shapes(artifact.input_names, source.input_shape, [batch])
                    tensorrt_cache_dir(options, batch).mkdir(parents=True, exist_ok=True)
                    providers = session_providers(target, options, stream, shapes, batch)
                    sessions[batch], cpu_nodes = _create_session(
                        ort, artifact.path, target, options.threads, providers, _profile_prefix(options)
                    )
                session = sessions[min(sessions)]
            else:
                providers = session_providers(target, options, stream, {})
                session, cpu_nodes = _create_session(
                    ort, artifact.path, target, options.threads, providers, _profile_prefix(options)
                )
            wanted = PROVIDERS[target.device]
            if session.get_providers()[0] != wanted:
                # ORT silently falls back to the CPU when a provider fails to load: never report that as GPU.
                raise CcnbenchError(
                    f"{wanted} failed to load; onnxruntime fell back to {session.get_providers()}"
                )
            cuda_details: dict[str, Any] = {}
            if target.is_cuda:
                # Which nodes (if any) run on the CPU provider inside the timed call.
                placed = (
                    cpu_node_names(ort, artifact, source, options.threads, providers) if cpu_nodes else []
                )
                cuda_details = {"cpu_fallback": cpu_nodes, "cpu_nodes": placed}
                cuda_details["tf32"] = uses_tf32(target, options.precision)
            runner = OrtRunner(
                target,
                artifact.output_names,
                details={
                    "artifact": artifact.path.name,
                    "providers": session.get_providers(),
                    **(
                        {"optimized_model": optimized_model_path(prefix)}
                        if (prefix := _profile_prefix(options))
                        else {}
                    ),
                    **cuda_details,
                },
                session=session,
                sessions=sessions,
                _run_options=run_options(ort, target),
                input_names=artifact.input_names,
                io_dtype=torch.float16 if artifact.io == "fp16" else torch.float32,
                _stream=stream,
            )
            if target.device == "tensorrt":
                # The TensorRT provider builds its engine on the first run of each shape: build cost.
                for batch in options.batch_sizes:
                    inputs = [x.to("cuda", runner.io_dtype) for x in source.make_inputs(batch)]
                    runner.infer(inputs)
                torch.cuda.synchronize()
        runner.build_seconds = sw.seconds
        if is_int8(options.precision):
            layers = ort_layers(ort, artifact.path, options.threads)
            if not layers["ran_int8"]:
                raise CcnbenchError(nothing_in_int8(artifact.path.name, "ONNX Runtime", layers))
            runner.details |= as_details(layers)
        return runner


def optimized_model_path(profile_prefix: str) -> str:
    return f"{profile_prefix}.optimized.onnx"


def _profile_prefix(options: BuildOptions) -> str | None:
    """Where a profiling session writes its trace (the temporary directory: the reader moves or
    deletes it), or None when not profiling."""
    if not options.profiling:
        return None
    return str(Path(tempfile.gettempdir()) / f"ccnbench-ort-profile-{os.getpid()}")


def _create_session(
    ort: Any,
    path: Path,
    target: Target,
    threads: int | None,
    providers: list[Any],
    profile_prefix: str | None = None,
) -> tuple[Any, bool]:
    """The session, and whether some of its nodes run on the CPU provider.

    On CUDA the session is first created with CPU fallback disabled. ORT may still place small
    shape computations on the CPU on purpose; then it is created again with fallback allowed and
    the case says so (``cpu_nodes``) rather than failing.
    """
    attempts = (False, True) if target.is_cuda else (True,)
    for cpu_fallback in attempts:
        so = session_options(ort, target, threads, cpu_fallback, profile_prefix)
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=providers), cpu_fallback
        except Exception as exc:
            if not cpu_fallback and _CPU_FALLBACK_ERROR in str(exc):
                continue
            raise CcnbenchError(f"onnxruntime could not load {path.name}: {one_line(exc)}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def cpu_node_names(
    ort: Any, artifact: Any, source: ModelSource, threads: int | None, providers: list[Any]
) -> list[str]:
    """The nodes ONNX Runtime places on its CPU provider for a CUDA session, as ``name (OpType)``.

    ORT's profile names the provider of every node it ran; a throw-away session with profiling
    runs one batch-1 inference to read it (the timed session itself is never profiled).
    """
    so = session_options(ort, Target("ort", "cuda"), threads, cpu_fallback=True)
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(artifact.path).parent / f"ort-profile-{os.getpid()}")
    session = ort.InferenceSession(str(artifact.path), sess_options=so, providers=providers)
    dtype = np.float16 if artifact.io == "fp16" else np.float32
    feeds = {n: x.numpy().astype(dtype) for n, x in zip(artifact.input_names, source.make_inputs(1))}
    session.run(None, feeds)
    profile = Path(session.end_profiling())
    try:
        return cpu_nodes_from_profile(json.loads(profile.read_text()))
    finally:
        profile.unlink(missing_ok=True)


def cpu_nodes_from_profile(events: Sequence[dict[str, Any]]) -> list[str]:
    """``name (OpType)`` of every node an ORT profile shows on the CPU provider, in run order."""
    found: dict[str, None] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and args.get("provider") == "CPUExecutionProvider":
            name = str(event.get("name", "")).removesuffix("_kernel_time")
            found[f"{name} ({args.get('op_name', '?')})"] = None
    return list(found)
