"""Each runtime's own per-layer profiler behind one small interface, and the registry of them.

A ``LayerProfiler`` wraps a runner prepared with ``BuildOptions.profiling`` (or, for eager
PyTorch, a plain runner it adds module hooks to). ``active`` is entered around the profiled
calls that are timed (only PyTorch's profiler is switched on per block); ``collect`` runs calls
and returns, per call, the units of work the runtime timed, the last of them an ``outside
layers`` event for what the call took beyond its units (on our own clock), so that every call's
events add up to the call.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ccnbench.backends import Runner
from ccnbench.explain.onnx_nodes import NodeOwners
from ccnbench.explain.records import OUTSIDE, LayerEvent


class LayerProfiler(abc.ABC):
    """One runtime's profiler on one profiling runner."""

    # Said instead of a per-layer table when the runtime's times are not the layers' own.
    caveat: str | None = None

    def __init__(self, runner: Runner, owners: NodeOwners | None) -> None:
        self.runner = runner
        self.owners = owners

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Around the profiled calls that are timed; most runtimes profile every call anyway."""
        yield

    @abc.abstractmethod
    def collect(self, staged: Sequence[Tensor], calls: int) -> list[list[LayerEvent]]:
        """Run ``calls`` profiled calls; each call's events, ending with its ``outside layers``."""

    def save_trace(self, path: Path) -> Path | None:
        """Keep the runtime's raw trace at ``path`` (suffix chosen here); None when it has none."""
        return None

    def close(self) -> None:  # noqa: B027
        """Remove temporary files."""


def outside_event(wall_us: float, events: Sequence[LayerEvent]) -> LayerEvent:
    """What a call took beyond its units: the runtime's own dispatch, binding and scheduling."""
    return LayerEvent(OUTSIDE, "", "", max(0.0, wall_us - sum(e.us for e in events)))


def timed_calls(call: Any, calls: int, after: Any = None) -> list[float]:
    """Wall time of each of ``calls`` calls in µs (``after(i)`` runs between calls, untimed)."""
    walls = []
    for i in range(calls):
        start = time.perf_counter()
        call()
        walls.append((time.perf_counter() - start) * 1e6)
        if after is not None:
            after(i)
    return walls
