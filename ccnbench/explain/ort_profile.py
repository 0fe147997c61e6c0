"""ONNX Runtime's session profiling: one Chrome-trace event per node run, grouped into calls.

The session is created with ``SessionOptions.enable_profiling`` (``BuildOptions.profiling``).
Each ``run`` writes a ``model_run`` event and, inside its time span, one ``<node>_kernel_time``
event per node with the node's op type and execution provider; ``end_profiling`` writes the
file. Node names are the ONNX file's, mapped to modules by the exporter's metadata. The session
also writes its optimized graph: a node there covers the file's nodes whose outputs it produces
(``onnx_nodes.fused_cover``: a FusedConv covers its Conv and the ReLU it absorbed); a node that
covers none of the file's was added by ONNX Runtime.
"""

from __future__ import annotations

import bisect
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ccnbench.explain.onnx_nodes import fused_cover
from ccnbench.explain.profilers import LayerProfiler, outside_event, timed_calls
from ccnbench.explain.records import LayerEvent

_SUFFIX = "_kernel_time"


class OrtProfiler(LayerProfiler):
    caveat_cuda = (
        "ONNX Runtime's wheels time CUDA nodes on the host (the launch), not on the GPU: "
        "its CUDA kernel profiler is a build option"
    )

    def __init__(self, runner: Any, owners: Any) -> None:
        super().__init__(runner, owners)
        if runner.target.is_cuda:
            self.caveat = self.caveat_cuda
        self._trace: Path | None = None
        optimized = runner.details.get("optimized_model")
        self.cover: dict[str, tuple[str, ...]] = {}
        if owners is not None and optimized and Path(optimized).is_file():
            self.cover = fused_cover(optimized, owners)
            Path(optimized).unlink()

    def collect(self, staged: Sequence[Tensor], calls: int) -> list[list[LayerEvent]]:
        def call() -> None:
            self.runner.infer(staged)
            if self.runner.is_cuda:  # a CUDA session may return before its kernels finish
                torch.cuda.synchronize()

        walls = timed_calls(call, calls)
        self._trace = Path(self.runner.session.end_profiling())
        runs = runs_from_trace(json.loads(self._trace.read_text()))[-calls:]
        return [
            [*events, outside_event(wall, events)]
            for wall, events in zip(walls, (self.events_of(run) for run in runs))
        ]

    def events_of(self, nodes: Sequence[dict[str, Any]]) -> list[LayerEvent]:
        """One call's node events as LayerEvents."""
        return [self.event(node) for node in nodes]

    def event(self, node: dict[str, Any]) -> LayerEvent:
        args = node.get("args") or {}
        name = str(node["name"]).removesuffix(_SUFFIX)
        provider = str(args.get("provider", "")).removesuffix("ExecutionProvider")
        op = str(args.get("op_name", ""))
        # ORT's profile names the op and the provider that ran it, not a finer implementation.
        kernel = f"{op} ({provider})" if provider else op
        us = float(node.get("dur", 0))
        if self.owners is None:
            return LayerEvent(name, op, kernel, us)
        if name in self.cover:
            return LayerEvent(name, op, kernel, us, self.cover[name])
        modules = self.owners.modules(name)
        if modules:
            return LayerEvent(name, op, kernel, us, modules)
        covered = sorted(n for n in self.owners.owners if n and n in name)
        if covered:  # an optimizer fusion named after the node(s) it replaced
            return LayerEvent(name, op, kernel, us, self.owners.modules_of(covered))
        return LayerEvent(name, op, kernel, us, added=True)

    def save_trace(self, path: Path) -> Path | None:
        if self._trace is None:
            return None
        out = path.with_suffix(".ort.json")
        shutil.copyfile(self._trace, out)
        return out

    def close(self) -> None:
        if self._trace is not None:
            self._trace.unlink(missing_ok=True)


def runs_from_trace(events: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The node events of each ``model_run`` in an ONNX Runtime profile, in run order.

    A node belongs to the run whose time span holds its start; a node outside every run (the
    session's initialisation) belongs to none.
    """
    spans = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    starts = [start for start, _ in spans]
    runs: list[list[dict[str, Any]]] = [[] for _ in spans]
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith(_SUFFIX):
            continue
        ts = float(event["ts"])
        i = bisect.bisect_right(starts, ts) - 1
        if i >= 0 and ts <= spans[i][1]:
            runs[i].append(event)
    return runs
