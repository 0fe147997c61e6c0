"""TensorRT's per-layer times through ``IProfiler``, and its layers through the engine inspector.

Written against NVIDIA's documented Python API (not run here: TensorRT cannot be installed on
the machines that built this). A ``trt.IProfiler`` subclass set as ``IExecutionContext.profiler``
has ``report_layer_time(layer_name, ms)`` called once per layer for each ``execute_async_v3``.
Engines are built with ``ProfilingVerbosity.DETAILED``, so layer names are the ONNX nodes they
hold joined by `` + `` (a fused Conv and activation), and the inspector's JSON gives each
layer's tactic and, in its metadata, the ONNX nodes it came from (``[ONNX Layer: name]``). A layer that holds no node of the file (a reformatting copy) is one TensorRT added.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ccnbench.backends.tensorrt_compat import import_tensorrt
from ccnbench.explain.profilers import LayerProfiler, outside_event, timed_calls
from ccnbench.explain.records import LayerEvent


class TensorRTProfiler(LayerProfiler):
    def __init__(self, runner: Any, owners: Any) -> None:
        super().__init__(runner, owners)
        trt = import_tensorrt()

        class LayerTimes(trt.IProfiler):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)
                self.reported: list[tuple[str, float]] = []

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.reported.append((layer_name, ms))

        self.times = LayerTimes()
        runner.context.profiler = self.times
        inspector = runner.engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        layers = [layer for layer in info.get("Layers", []) if isinstance(layer, dict)]
        self.tactics = {
            str(layer.get("Name")): str(layer.get("TacticName", layer.get("LayerType", "")))
            for layer in layers
        }
        # DETAILED verbosity records the ONNX nodes each layer came from in its metadata.
        self.sources = {
            str(layer.get("Name")): onnx_layers(str(layer.get("Metadata", ""))) for layer in layers
        }

    def collect(self, staged: Sequence[Tensor], calls: int) -> list[list[LayerEvent]]:
        per_call: list[list[LayerEvent]] = []

        def call() -> None:
            self.runner.infer(staged)
            self.runner.stream.synchronize()  # the profiler reports once the call has finished

        def read(_: int) -> None:
            per_call.append([self.event(name, ms) for name, ms in self.times.reported])
            self.times.reported.clear()

        walls = timed_calls(call, calls, after=read)
        return [[*events, outside_event(wall, events)] for wall, events in zip(walls, per_call)]

    def event(self, layer: str, ms: float) -> LayerEvent:
        nodes = self.sources.get(layer) or [n.strip() for n in layer.split(" + ")]
        kernel = self.tactics.get(layer, "")
        if self.owners is None:
            return LayerEvent(layer, "", kernel, ms * 1e3)
        modules = self.owners.modules_of(nodes)
        return LayerEvent(layer, "", kernel, ms * 1e3, modules, added=not modules)


def onnx_layers(metadata: str) -> list[str]:
    """The ONNX node names in a layer's inspector metadata (``[ONNX Layer: node_Conv_88]``)."""
    return [name.strip() for name in re.findall(r"ONNX Layer: ([^\]\x1f]+)", metadata)]
