"""Tracing for the graph merge: a module's own ``forward`` as a ``torch.fx`` graph of submodule
calls (every submodule is one node), and the value of every node on example inputs.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, fx, nn


class Untraceable(Exception):
    """The module's forward cannot be traced; the message is the user-facing reason."""


class _LeafTracer(fx.Tracer):
    """Traces only the root's own forward: every submodule call is one node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def trace(module: nn.Module, num_inputs: int) -> fx.GraphModule:
    """``module``'s own forward with every submodule call as one node; raises ``Untraceable``."""
    name = type(module).__name__
    params = list(inspect.signature(module.forward).parameters.values())
    variadic = [p for p in params if p.kind is p.VAR_POSITIONAL]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    concrete: tuple[Any, ...] | None = None
    if variadic and not positional:
        # forward(*inputs): fx makes one placeholder per input only when told how many there are.
        concrete = tuple(fx.PH for _ in range(num_inputs))
    elif variadic or len(positional) < num_inputs:
        raise Untraceable(f"cannot trace {name}.forward: its signature mixes named and *variadic inputs")
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(module, concrete_args=concrete)  # type: ignore[arg-type]
    except Exception as exc:
        raise Untraceable(f"cannot trace {name}.forward with torch.fx: {first_line(exc)}") from exc
    return fx.GraphModule(tracer.root, graph, name)


def record(gm: fx.GraphModule, inputs: tuple[Tensor, ...]) -> dict[fx.Node, Any]:
    """The value of every node on ``inputs`` (shapes, and the inputs of calls to descend into)."""
    values: dict[fx.Node, Any] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n] = result = super().run_node(n)
            return result

    with torch.no_grad():
        _Recorder(gm).run(*inputs)
    return values


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
