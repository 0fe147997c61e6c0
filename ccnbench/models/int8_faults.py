"""Deliberate int8 quantization bugs, for the evidence behind int8 grading (scripts/int8_evidence.py).

The generic export faults (``ccnbench.models.faults``) break the model before it is quantized;
these break the quantization itself, the way it really goes wrong:

- ``constant_calibration``: every calibration sample is the same constant (a data loader that
  yields a placeholder), so the activation ranges describe nothing the model will see;
- ``wrong_scale``: the DequantizeLinear after the first convolution's QuantizeLinear reads a scale
  twice the one it was quantized with (a scale taken from another tensor, a power-of-two slip);
- ``branch_scales``: in a kept file, every activation scale and zero point of branch 1 replaced
  by branch 0's at the same place (one branch's calibration reused for all); a merged file has one
  scale per layer for all branches, so the fault does not exist there;
- ``per_tensor``: one scale per weight tensor where per-channel was asked.

Each is a ``Int8Fault``: what it does to the recipe, the calibration feeds, or the quantized graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

WRONG_SCALE = 2.0
CONSTANT = 0.5


@dataclass(frozen=True)
class Int8Fault:
    name: str
    # On the int8 recipe (``ccnbench.formats.int8.Recipe``; models sit below formats, so not imported).
    recipe: Callable[[Any], Any] = lambda r: r
    feeds: Callable[[list[dict[str, np.ndarray]]], list[dict[str, np.ndarray]]] = lambda f: f
    edit: Callable[[Any], None] | None = None


def int8_faults(layout: str, branches: int) -> list[Int8Fault]:
    """The faults that apply to a file of ``layout`` with ``branches`` separate inputs."""
    faults = [
        Int8Fault("constant_calibration", feeds=_constant),
        Int8Fault("wrong_scale", edit=wrong_scale),
        Int8Fault("per_tensor", recipe=lambda r: replace(r, per_channel=False)),
    ]
    if layout == "kept" and branches >= 2:
        faults.append(Int8Fault("branch_scales", edit=branch_scales))
    return faults


def _constant(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [{k: np.full_like(v, CONSTANT) for k, v in f.items()} for f in feeds]


def wrong_scale(proto: Any) -> None:
    """The first Conv output's DequantizeLinear reads ``WRONG_SCALE`` times its scale."""
    from onnx import numpy_helper

    graph = proto.graph
    consumers = _consumers(graph)
    inits = {t.name: t for t in graph.initializer}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        quant = next((n for n in consumers.get(conv.output[0], []) if n.op_type == "QuantizeLinear"), None)
        if quant is None:
            continue
        dequant = next(n for n in consumers[quant.output[0]] if n.op_type == "DequantizeLinear")
        scale = numpy_helper.to_array(inits[dequant.input[1]]) * np.float32(WRONG_SCALE)
        name = dequant.input[1] + "_wrong"
        graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), name))
        dequant.input[1] = name
        return
    raise ValueError("no quantized Conv output to give a wrong scale")


def branch_scales(proto: Any) -> None:
    """Branch 1's activation Q/DQ nodes read branch 0's scales and zero points, place by place.

    A branch is what only its own graph input reaches; its Q/DQ nodes are paired with branch 0's
    in graph order (the same layers in the same order)."""
    graph = proto.graph
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    own = [_only_from(graph, name, inputs) for name in inputs[:2]]
    q0, q1 = ([n for n in graph.node if n.name in part and n.op_type in _QDQ] for part in own)
    if len(q0) != len(q1) or not q0:
        raise ValueError("branches 0 and 1 have different quantization nodes: not a kept multi-input file")
    for a, b in zip(q0, q1):
        b.input[1], b.input[2] = a.input[1], a.input[2]


_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _only_from(graph: Any, start: str, inputs: Sequence[str]) -> set[str]:
    """Names of the nodes that ``start`` reaches and no other graph input does."""
    for i, n in enumerate(graph.node):
        if not n.name:
            n.name = f"node_{i}"
    reach = {name: _reached(graph, name) for name in inputs}
    others = set().union(*(r for name, r in reach.items() if name != start))
    return reach[start] - others


def _reached(graph: Any, start: str) -> set[str]:
    consumers = _consumers(graph)
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        tensor = frontier.pop()
        for n in consumers.get(tensor, []):
            if n.name not in seen:
                seen.add(n.name)
                frontier.extend(n.output)
    return seen
