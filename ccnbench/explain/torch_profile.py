"""Eager PyTorch under ``torch.profiler``, with each op charged to the module that ran it.

The profiler alone names modules by class and position (``Conv3d_0``) or not at all, so every
module of the profiling runner gets a forward pre-hook and hook that open and close a
``record_function`` range named after its qualified path. In each call's event tree every
event's *self* time goes to the innermost module range around it (a module range's own self time
is its Python forward), and the call's own self time is ``outside layers``: the self times of one
tree add up to the call, so nothing is dropped or counted twice. The kernel shown is the op that
took most self time in that module (``aten::mkldnn_convolution``). On CUDA the profiler records the
kernels too, and a module's time is its ops' device time.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ccnbench.explain.profilers import LayerProfiler, outside_event
from ccnbench.explain.records import OUTSIDE, LayerEvent

MODULE_PREFIX = "ccnbench-module:"
CALL = "ccnbench-call"


class TorchProfiler(LayerProfiler):
    def __init__(self, runner: Any, owners: Any) -> None:
        super().__init__(runner, owners)
        module: nn.Module = runner.module
        self.classes = {path: type(m).__name__ for path, m in module.named_modules()}
        self._handles = add_module_ranges(module)
        self._profile: Any = None
        self.cuda = runner.is_cuda

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with _profile(self.cuda):
            yield

    def collect(self, staged: Sequence[Tensor], calls: int) -> list[list[LayerEvent]]:
        walls = []
        with _profile(self.cuda) as prof:
            for _ in range(calls):
                start = time.perf_counter()
                with torch.profiler.record_function(CALL):
                    self.runner.infer(staged)
                    if self.cuda:
                        torch.cuda.synchronize()
                walls.append((time.perf_counter() - start) * 1e6)
        self._profile = prof
        roots = [e for e in prof.events() if e.name == CALL]
        return [self.events_of(root, wall) for root, wall in zip(roots, walls)]

    def events_of(self, root: Any, wall_us: float | None = None) -> list[LayerEvent]:
        """One call's event tree as one LayerEvent per module, then ``outside layers``.

        On CUDA the modules' times are their kernels' device times (the host only launches them)
        and ``outside layers`` is the rest of the call's wall time."""
        times, kernels = charge(root, device=self.cuda)
        events = [
            LayerEvent(path, self.classes.get(path, ""), _top(kernels[path]), us, (path,))
            for path, us in times.items()
            if path is not None
        ]
        if self.cuda and wall_us is not None:
            return [*events, outside_event(wall_us, events)]
        return [*events, LayerEvent(OUTSIDE, "", _top(kernels[None]), times.get(None, 0.0))]

    def save_trace(self, path: Path) -> Path | None:
        if self._profile is None:
            return None
        out = path.with_suffix(".torch.json")
        self._profile.export_chrome_trace(str(out))
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextlib.contextmanager
def _profile(cuda: bool = False) -> Iterator[Any]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=activities)
    with _quiet_native_stderr():
        prof.__enter__()
    try:
        yield prof
    finally:
        with _quiet_native_stderr():
            prof.__exit__(None, None, None)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Kineto writes a line to the process's stderr at every profiler start and stop
    ("USDT: ... profiler_start") whatever its log level; those lines would bury the table."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def add_module_ranges(module: nn.Module) -> list[Any]:
    """Open a ``record_function`` range named ``ccnbench-module:<path>`` around every module's forward."""
    handles = []
    for path, sub in module.named_modules():
        ranges: list[Any] = []

        def enter(
            _: nn.Module, __: Any, ranges: list[Any] = ranges, name: str = MODULE_PREFIX + path
        ) -> None:
            scope = torch.profiler.record_function(name)
            scope.__enter__()
            ranges.append(scope)

        def leave(_: nn.Module, __: Any, ___: Any, ranges: list[Any] = ranges) -> None:
            ranges.pop().__exit__(None, None, None)

        handles += [sub.register_forward_pre_hook(enter), sub.register_forward_hook(leave)]
    return handles


def charge(
    root: Any, device: bool = False
) -> tuple[dict[str | None, float], dict[str | None, dict[str, float]]]:
    """Self time per owning module path (None: the call itself) over ``root``'s event tree, and
    per owner the self time of each op name under it (``device``: CUDA kernel time instead of host)."""
    times: dict[str | None, float] = defaultdict(float)
    kernels: dict[str | None, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    stack: list[tuple[Any, str | None]] = [(root, None)]
    while stack:
        event, owner = stack.pop()
        if event.name.startswith(MODULE_PREFIX):
            owner = event.name[len(MODULE_PREFIX) :]
        spent = event.self_device_time_total if device else event.self_cpu_time_total
        if event is not root and not event.name.startswith(MODULE_PREFIX):
            kernels[owner][event.name] += spent
        times[owner] += spent
        stack.extend((child, owner) for child in reversed(event.cpu_children))  # in run order
    return dict(times), kernels


def _top(ops: dict[str, float]) -> str:
    return max(ops, key=ops.__getitem__) if ops else ""
