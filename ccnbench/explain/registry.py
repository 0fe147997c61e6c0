"""Which per-layer profiler a target gets, or why its layers cannot be attributed.

Each profiler's module is imported only when its target is explained (TensorRT's imports
``tensorrt`` when constructed; ONNX Runtime's and OpenVINO's read their runners).
"""

from __future__ import annotations

from ccnbench.explain.profilers import LayerProfiler


def profiler_for(backend: str, device: str) -> type[LayerProfiler] | str:
    """The profiler class for a target, or why its layers cannot be attributed (one line)."""
    if backend == "ort":
        from ccnbench.explain.ort_profile import OrtProfiler

        return OrtProfiler
    if backend == "openvino":
        from ccnbench.explain.openvino_profile import OpenVinoProfiler

        return OpenVinoProfiler
    if backend == "torch":
        from ccnbench.explain.torch_profile import TorchProfiler

        return TorchProfiler
    if backend == "tensorrt":
        from ccnbench.explain.tensorrt_profile import TensorRTProfiler

        return TensorRTProfiler
    if backend in ("compile", "compile-graphs", "aoti"):
        return (
            "not attributable: Inductor fuses the model's ops into generated kernels that belong "
            "to no single module; the total is the fastest unprofiled call"
        )
    return f"no per-layer profiler for {backend}: the total is the fastest unprofiled call"
