"""OpenVINO's per-layer counters: ``PERF_COUNT`` and ``InferRequest.get_profiling_info()``.

Each entry of the profiling info is one layer of the compiled (runtime) model after OpenVINO's
own fusions: ``node_name``, ``node_type``, ``exec_type`` (the implementation, such as
``brgconv_avx512_f32``) and ``real_time``. The runtime model (``CompiledModel.get_runtime_model``)
says which layers of the ONNX file each one holds (``rt_info['originalLayersNames']``), in which
precision it ran (``runtimePrecision``) and what it is (``layerType``). A layer with no original
layers is one OpenVINO added (a Reorder between memory layouts); layers that did not run
(fused into a neighbour, or constants) are left out. The counters describe the request's last
call only, so they are read after every call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ccnbench.explain.profilers import LayerProfiler, outside_event, timed_calls
from ccnbench.explain.records import LayerEvent


class OpenVinoProfiler(LayerProfiler):
    def __init__(self, runner: Any, owners: Any) -> None:
        super().__init__(runner, owners)
        self.layers = runtime_layers(runner.compiled)
        self._last: list[dict[str, Any]] = []

    def collect(self, staged: Sequence[Tensor], calls: int) -> list[list[LayerEvent]]:
        request = None
        per_call: list[list[LayerEvent]] = []

        def read(_: int) -> None:
            nonlocal request
            request = request or self.runner.request_for(staged)
            per_call.append([self.event(info) for info in request.get_profiling_info() if _ran(info)])

        walls = timed_calls(lambda: self.runner.infer(staged), calls, after=read)
        self._last = [self._as_dict(info) for info in request.get_profiling_info()] if request else []
        return [[*events, outside_event(wall, events)] for wall, events in zip(walls, per_call)]

    def event(self, info: Any) -> LayerEvent:
        layer = self.layers.get(info.node_name, {})
        originals = layer.get("originals", ())
        us = info.real_time.total_seconds() * 1e6
        kernel = f"{info.exec_type}"
        if self.owners is None:
            return LayerEvent(info.node_name, info.node_type, kernel, us, added=not originals)
        modules = self.owners.modules_of(originals)
        return LayerEvent(info.node_name, info.node_type, kernel, us, modules, added=not originals)

    def _as_dict(self, info: Any) -> dict[str, Any]:
        return {
            "node_name": info.node_name,
            "node_type": info.node_type,
            "exec_type": info.exec_type,
            "real_time_us": info.real_time.total_seconds() * 1e6,
            "cpu_time_us": info.cpu_time.total_seconds() * 1e6,
            "status": str(info.status),
            **self.layers.get(info.node_name, {}),
        }

    def save_trace(self, path: Path) -> Path | None:
        # OpenVINO writes no trace file: its counters of the last call, as benchmark_app's
        # detailed report holds them, with each layer's runtime-model information.
        out = path.with_suffix(".openvino.json")
        out.write_text(json.dumps({"last_call_layers": self._last}, indent=1, default=list))
        return out


def _ran(info: Any) -> bool:
    return "EXECUTED" in str(info.status) and "NOT" not in str(info.status)


def runtime_layers(compiled: Any) -> dict[str, dict[str, Any]]:
    """Friendly name -> its original layers, layer type, runtime precision and primitive."""
    layers = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()

        def text(key: str, rt: Any = rt) -> str:
            return rt[key].astype(str) if key in rt else ""

        originals = tuple(n for n in text("originalLayersNames").split(",") if n)
        layers[op.get_friendly_name()] = {
            "originals": originals,
            "layer_type": text("layerType"),
            "runtime_precision": text("runtimePrecision"),
            "primitive": text("primitiveType"),
        }
    return layers
