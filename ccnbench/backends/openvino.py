"""OpenVINO's native runtime on the CPU, from the same ONNX artifact as ONNX Runtime.

Precision is pinned, never left to the runtime: on a CPU with bf16 (AVX512_BF16, AMX)
OpenVINO's default ``INFERENCE_PRECISION_HINT`` is bf16, so an fp32 file would silently run in
bf16. The case's precision is passed as the hint (fp32 -> f32, bf16 -> bf16, fp16 -> f16, all
from the fp32 file: in OpenVINO precision is a runtime choice), then read back from the compiled
model; a CPU that cannot honour it is an error, not a mislabelled result. The read-back value
is recorded in the results (``details.inference_precision``).

The configuration is latency-oriented like the other targets: one stream, the case's thread
count, ``PERFORMANCE_HINT=LATENCY``. Inputs and outputs are torch tensors shared with OpenVINO
(no copy inside the timed call), as ONNX Runtime's I/O binding does.

The ONNX Runtime OpenVINO execution provider is not a target: it runs the same OpenVINO CPU
plugin behind ONNX Runtime's session API, so it would time the same kernels plus a layer, and it
ships as a separate onnxruntime-openvino wheel that replaces onnxruntime.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ccnbench.backends.base import Backend, BuildOptions, Runner, Stopwatch, Target
from ccnbench.backends.int8_layers import as_details, nothing_in_int8, openvino_layers
from ccnbench.deps import require
from ccnbench.errors import CcnbenchError, one_line
from ccnbench.formats.int8 import INT8_PRECISIONS, is_int8
from ccnbench.formats.onnx_export import tiny_conv_onnx

if TYPE_CHECKING:
    from ccnbench.source import ModelSource

# ccnbench precision -> OpenVINO's element type name for INFERENCE_PRECISION_HINT.
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_FROM_HINT = {v: k for k, v in HINTS.items()}
# An int8 QDQ file runs its quantized layers in int8 whatever the hint; the hint sets the rest,
# pinned to f32 so no non-quantized layer silently runs in bf16.
HINTS |= {p: "f32" for p in INT8_PRECISIONS}


def openvino_unavailable_reason() -> str | None:
    try:
        ov = require("openvino", extra="openvino")
    except CcnbenchError as exc:
        return str(exc)
    devices = ov.Core().available_devices
    if "CPU" not in devices:
        return f"OpenVINO {ov.get_version()} sees no CPU device (it lists {devices or 'none'})"
    return None


def compile_config(options: BuildOptions) -> dict[str, Any]:
    """The compile properties for a case. Pure, so tests read it without OpenVINO."""
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": options.threads,
        "INFERENCE_PRECISION_HINT": HINTS[options.precision],
    }
    if options.profiling:
        config["PERF_COUNT"] = True  # per-layer counters, read with InferRequest.get_profiling_info()
    return config


def runtime_precision(compiled: Any) -> str:
    """The precision the compiled model really computes in, as a ccnbench name (or OpenVINO's)."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return _FROM_HINT.get(name, name)


@dataclass
class OpenVinoRunner(Runner):
    """One infer request per batch size, each with its inputs and outputs bound to torch tensors
    (a request's bound output cannot change shape, so requests are not shared across sizes)."""

    compiled: Any = None
    ov: Any = None
    _requests: dict[tuple[int, ...], Any] = field(default_factory=dict)
    _bound: dict[tuple[int, ...], tuple[Any, ...]] = field(default_factory=dict)
    _outputs: dict[tuple[int, ...], tuple[Tensor, ...]] = field(default_factory=dict)

    def infer(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if self.compiled is None:
            raise CcnbenchError("runner is closed")
        key = tuple(inputs[0].shape)
        # Rebinding is skipped when the same tensors come back (the timing loop), so the timed
        # call is the inference alone.
        identity = tuple(x.data_ptr() for x in inputs)
        if self._bound.get(key) != identity:
            self._bind(key, inputs)
            self._bound[key] = identity
        self._requests[key].infer()
        return self._outputs[key]

    def _bind(self, key: tuple[int, ...], inputs: Sequence[Tensor]) -> None:
        for i, x in enumerate(inputs):
            if not x.is_contiguous() or x.dtype != torch.float32 or x.device.type != "cpu":
                raise CcnbenchError(f"input {i} must be a contiguous float32 tensor on the CPU")
        first = key not in self._requests
        request = self._requests[key] if not first else self.compiled.create_infer_request()
        for i, x in enumerate(inputs):
            request.set_input_tensor(i, self.ov.Tensor(x.numpy(), shared_memory=True))
        if first:
            # Output shapes of a new batch size from one run with OpenVINO's own output tensors.
            request.infer()
            shapes = [tuple(request.get_output_tensor(i).shape) for i in range(len(self.output_names))]
            self._outputs[key] = tuple(torch.empty(s, dtype=torch.float32) for s in shapes)
            for i, y in enumerate(self._outputs[key]):
                request.set_output_tensor(i, self.ov.Tensor(y.numpy(), shared_memory=True))
            self._requests[key] = request

    def request_for(self, inputs: Sequence[Tensor]) -> Any:
        """The infer request that runs inputs of this shape (its profiling info is the last call's)."""
        return self._requests[tuple(inputs[0].shape)]

    def close(self) -> None:
        self._requests.clear()
        self._outputs.clear()
        self.compiled = None


class OpenVinoBackend(Backend):
    name = "openvino"
    devices = ("cpu",)
    needs_onnx = True
    ships_as = "ONNX file (OpenVINO)"
    vendor_runtime = True
    description = "OpenVINO runtime from the ONNX artifact, precision pinned and read back"

    def precisions(self, device: str) -> tuple[str, ...]:
        return ("fp32", "bf16", "fp16", *INT8_PRECISIONS)

    def availability(self, device: str) -> str | None:
        return openvino_unavailable_reason()

    def warm(self, device: str, options: BuildOptions) -> None:
        """Import OpenVINO and compile and run a one-Conv model with the case's properties: the
        CPU plugin, its thread pool and its memory arena exist before any member's baseline."""
        ov = require("openvino", extra="openvino")
        torch.set_num_threads(options.threads)
        core = ov.Core()
        with tempfile.TemporaryDirectory(prefix="ccnbench-warm-") as tmp:
            path = Path(tmp) / "warm.onnx"
            path.write_bytes(tiny_conv_onnx())
            compiled = core.compile_model(core.read_model(str(path)), "CPU", compile_config(options))
        compiled.create_infer_request().infer({0: torch.ones(1, 2, 6, 6, 6).numpy()})
        del compiled

    def artifact(self, source: ModelSource, target: Target, options: BuildOptions) -> Any:
        # One fp32 file for every float precision: OpenVINO lowers it at compile time (the hint).
        # int8 is the QDQ file. A user's own ONNX file is run at its own precision.
        precision = source.precision or (options.precision if is_int8(options.precision) else "fp32")
        return source.artifact(precision, "fp32", options.opset, options.artifacts_dir)

    def prepare(self, source: ModelSource, target: Target, options: BuildOptions) -> Runner:
        ov = require("openvino", extra="openvino")
        artifact = self.artifact(source, target, options)
        with Stopwatch() as sw:
            core = ov.Core()
            try:
                compiled = core.compile_model(
                    core.read_model(str(artifact.path)), "CPU", compile_config(options)
                )
            except Exception as exc:
                raise CcnbenchError(
                    f"OpenVINO could not compile {artifact.path.name}: {one_line(exc)}"
                ) from exc
            used = runtime_precision(compiled)
            if used != options.precision and not (is_int8(options.precision) and used == "fp32"):
                raise CcnbenchError(
                    f"OpenVINO runs this model in {used}, not {options.precision}: this CPU has no "
                    f"{options.precision} path (capabilities: {', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))})"
                )
            runner = OpenVinoRunner(
                target,
                artifact.output_names,
                details={
                    "artifact": artifact.path.name,
                    "inference_precision": used,
                    "default_inference_precision": _default_precision(core),
                    "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
                    "streams": int(compiled.get_property("NUM_STREAMS")),
                    "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
                    "openvino": ov.get_version(),
                },
                compiled=compiled,
                ov=ov,
            )
            # Dynamic shapes are specialised on first use: that belongs to the build, not the timing.
            for batch in options.batch_sizes:
                runner.infer(source.make_inputs(batch))
        runner.build_seconds = sw.seconds
        if is_int8(options.precision):
            layers = openvino_layers(compiled)
            if not layers["ran_int8"]:
                raise CcnbenchError(nothing_in_int8(artifact.path.name, "OpenVINO", layers))
            runner.details |= as_details(layers)
        return runner


def _default_precision(core: Any) -> str:
    """What OpenVINO would have used unasked (bf16 on CPUs with AVX512_BF16/AMX): the trap."""
    hint = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
    name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return _FROM_HINT.get(name, name)
