"""The runtimes, one module each behind ``Backend.prepare`` -> ``Runner.infer``, and their one
registry: adding a backend is one module and one line in ``_BACKENDS``."""

from __future__ import annotations

from ccnbench.backends.aoti import AotiBackend
from ccnbench.backends.base import Backend, BuildOptions, Runner, Target
from ccnbench.backends.compiled import CompileBackend, CompileGraphsBackend
from ccnbench.backends.onnxruntime import OrtBackend
from ccnbench.backends.openvino import OpenVinoBackend
from ccnbench.backends.tensorrt import TensorRTBackend
from ccnbench.backends.torch_eager import TorchBackend
from ccnbench.errors import UsageError

_BACKENDS: tuple[Backend, ...] = (
    TorchBackend(),
    CompileBackend(),
    CompileGraphsBackend(),
    OrtBackend(),
    TensorRTBackend(),
    AotiBackend(),
    OpenVinoBackend(),
)
BACKENDS: dict[str, Backend] = {b.name: b for b in _BACKENDS}

__all__ = [
    "BACKENDS",
    "Backend",
    "BuildOptions",
    "Runner",
    "Target",
    "all_targets",
    "backend_of",
    "parse_targets",
]


def all_targets() -> list[Target]:
    return [t for b in _BACKENDS for t in b.targets()]


def backend_of(target: Target) -> Backend:
    try:
        return BACKENDS[target.backend]
    except KeyError:
        raise UsageError(f"unknown backend {target.backend!r}; choose from {', '.join(BACKENDS)}") from None


def parse_targets(text: str | list[str]) -> list[Target]:
    """``'torch:cpu,ort:cpu'``, a list, or ``all`` / ``cpu`` / ``cuda`` for every target of a kind."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise UsageError("no targets given")
    targets: list[Target] = []
    for item in items:
        if item in ("all", "cpu", "cuda"):
            targets += [t for t in all_targets() if item == "all" or t.device_kind == item]
            continue
        target = Target.parse(item)
        backend = backend_of(target)
        if target.device not in backend.devices:
            raise UsageError(
                f"{backend.name} has no device {target.device!r}; it runs on {', '.join(backend.devices)}"
            )
        targets.append(target)
    return list(dict.fromkeys(targets))
