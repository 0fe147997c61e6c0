"""What a case runs: one of ccnbench's variants, a user's nn.Module factory, or a user's ONNX file.

A ModelSource is plain data (it crosses into worker processes as JSON) and knows how to make
everything the backends and the agreement check need: the module, the ONNX artifact, seeded
inputs, the float64 oracle and the FLOP count.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.models import LAYOUTS, FusionNet, ModelSpec, build, flops_per_sample, merge

if TYPE_CHECKING:
    from ccnbench.export import Artifact

KINDS = ("spec", "factory", "onnx")


@dataclass(frozen=True)
class ModelSource:
    """One model in one layout. Build with ``from_spec``, ``from_factory`` or ``from_onnx``."""

    kind: str
    layout: str = "kept"
    spec: ModelSpec | None = None
    factory: str | None = None
    input_shape: tuple[int, ...] = ()
    num_inputs: int = 1
    onnx_path: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    # --- construction --------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: ModelSpec, layout: str = "kept") -> ModelSource:
        if layout not in LAYOUTS:
            raise UsageError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
        return cls("spec", layout, spec=spec, input_shape=spec.input_shape, num_inputs=spec.num_inputs)

    @classmethod
    def from_factory(
        cls, factory: str, input_shape: tuple[int, ...], num_inputs: int = 1, layout: str = "kept"
    ) -> ModelSource:
        """``factory`` is ``package.module:function`` or ``path/to/file.py:function``."""
        if ":" not in factory:
            raise UsageError(f"--model {factory!r} must be package.module:function or file.py:function")
        if not input_shape or any(d < 1 for d in input_shape):
            raise UsageError(f"--input-shape must be positive sizes like 1x24x24x24, got {input_shape}")
        if num_inputs < 1:
            raise UsageError(f"--branches must be >= 1, got {num_inputs}")
        # Import now so a typo is a clear usage error, but do not call the factory here: a broken
        # one must fail inside a worker, not take the sweep down with it.
        _load_factory(factory)
        return cls("factory", layout, factory=factory, input_shape=tuple(input_shape), num_inputs=num_inputs)

    @classmethod
    def from_onnx(cls, path: str | Path) -> ModelSource:
        from ccnbench.export import load_artifact

        artifact = load_artifact(path)
        shapes = {tuple(s[1:]) for s in artifact.input_shapes}
        if len(shapes) != 1:
            raise UsageError(f"{path}: inputs of different shapes {sorted(shapes)} are not supported")
        if any(not isinstance(s[0], str) for s in artifact.input_shapes):
            raise UsageError(f"{path}: the batch dimension is fixed; export with a dynamic batch (dim 0)")
        source = cls(
            "onnx",
            artifact.layout if artifact.layout in LAYOUTS else "kept",
            input_shape=tuple(int(d) for d in shapes.pop()),
            num_inputs=len(artifact.input_names),
            onnx_path=str(Path(path).resolve()),
        )
        source._cache["own"] = artifact
        return source

    # --- identity ------------------------------------------------------------------------

    @property
    def label(self) -> str:
        if self.kind == "spec":
            assert self.spec is not None
            return self.spec.label
        if self.kind == "factory":
            return f"user:{self.factory}"
        return f"onnx:{Path(self.onnx_path or '').name}"

    @property
    def digest(self) -> str:
        if self.kind == "spec":
            assert self.spec is not None
            return self.spec.digest()
        text = json.dumps([self.kind, self.factory, self.onnx_path, list(self.input_shape), self.num_inputs])
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layout": self.layout,
            "spec": self.spec.to_dict() if self.spec else None,
            "factory": self.factory,
            "input_shape": list(self.input_shape),
            "num_inputs": self.num_inputs,
            "onnx_path": self.onnx_path,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSource:
        spec = ModelSpec.from_dict(data["spec"]) if data.get("spec") else None
        return cls(
            kind=data["kind"],
            layout=data.get("layout", "kept"),
            spec=spec,
            factory=data.get("factory"),
            input_shape=tuple(data.get("input_shape", ())),
            num_inputs=int(data.get("num_inputs", 1)),
            onnx_path=data.get("onnx_path"),
        )

    # --- interface -----------------------------------------------------------------------

    @property
    def has_module(self) -> bool:
        return self.kind != "onnx"

    @property
    def input_names(self) -> tuple[str, ...]:
        if self.spec is not None:
            return self.spec.input_names
        if self.kind == "onnx":
            return self._own_artifact().input_names
        return ("input",) if self.num_inputs == 1 else tuple(f"input_{i}" for i in range(self.num_inputs))

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.spec is not None:
            return self.spec.output_names
        if self.kind == "onnx":
            return self._own_artifact().output_names
        key = "output_names"
        if key not in self._cache:
            with torch.no_grad():
                y = self.module()(*self.make_inputs(1, seed=0))
            count = len(y) if isinstance(y, (tuple, list)) else 1
            self._cache[key] = ("output",) if count == 1 else tuple(f"output_{i}" for i in range(count))
        return self._cache[key]

    def module(self) -> nn.Module:
        """The PyTorch module in this source's layout: eval mode, float32, CPU."""
        return self.module_for(self.layout)

    def module_for(self, layout: str) -> nn.Module:
        if self.kind == "spec":
            assert self.spec is not None
            return build(self.spec, layout)
        if self.kind == "factory":
            # The factory runs once per process (it may load a checkpoint); callers get copies
            # because backends move and cast the module they are given in place.
            if "factory_module" not in self._cache:
                self._cache["factory_module"] = _load_factory(self.factory or "")().eval()
            module = copy.deepcopy(self._cache["factory_module"])
            if layout == "merged" and not isinstance(module, FusionNet):
                raise UsageError(
                    "a user model can only be run kept: merging needs one of ccnbench's variants"
                )
            return merge(module) if layout == "merged" else module
        raise UsageError(f"{self.label} is an ONNX file: targets that run a PyTorch module need --model")

    def artifact(
        self, precision: str = "fp32", io: str = "fp32", opset: int = 18, artifacts_dir: Path | None = None
    ) -> Artifact:
        """The ONNX artifact of this source at ``precision`` (exported once, then reused)."""
        from ccnbench.export import DEFAULT_ARTIFACTS, export, export_module

        if self.kind == "onnx":
            own = self._own_artifact()
            if own.precision != precision:
                raise UsageError(
                    f"{self.label} is a {own.precision} ONNX file; it cannot be run at {precision} "
                    "(give an ONNX file of that precision)"
                )
            return own
        key = ("artifact", precision, io, opset)
        if key in self._cache:
            return self._cache[key]
        out = Path(artifacts_dir or DEFAULT_ARTIFACTS)
        if self.kind == "spec":
            assert self.spec is not None
            artifact = export(self.spec, self.layout, precision, opset=opset, out_dir=out, io=io)
        else:
            module = self.module()
            name = Path((self.factory or "").replace(":", "-")).name.replace(".py", "")
            shape = "x".join(map(str, self.input_shape))
            # The user's weights are part of the name: edited code must never reuse a stale export.
            stem = f"user-{name}-{self.layout}-{self.num_inputs}x{shape}-{precision}-op{opset}-{_weights_digest(module)}"
            artifact = export_module(
                module,
                self.input_names,
                self.input_shape,
                out / f"{stem}.onnx",
                self.output_names,
                precision,
                io,
                opset,
            )
        self._cache[key] = artifact
        return artifact

    def _own_artifact(self):
        """A user's ONNX file, described once."""
        from ccnbench.export import load_artifact

        if "own" not in self._cache:
            self._cache["own"] = load_artifact(self.onnx_path or "")
        return self._cache["own"]

    @property
    def precision(self) -> str | None:
        """An ONNX file's own precision; None for sources that can be exported at any."""
        return self._own_artifact().precision if self.kind == "onnx" else None

    def make_inputs(self, batch: int, seed: int = 0) -> tuple[Tensor, ...]:
        """Seeded float32 inputs on the CPU, the same for every target of a case."""
        generator = torch.Generator().manual_seed(seed * 7919 + batch)
        return tuple(
            torch.randn(batch, *self.input_shape, generator=generator) for _ in range(self.num_inputs)
        )

    def flops_per_sample(self) -> int | None:
        if self.spec is not None:
            return flops_per_sample(self.spec)
        if self.kind == "factory":
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                self.module()(*self.make_inputs(1))
            return int(counter.get_total_flops()) or None
        return None

    def oracle(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The reference outputs, float64 on the CPU.

        PyTorch sources: the *kept* module in float64 with the same weights and inputs, so every
        target, eager fp32 included, is measured against the same higher-precision truth. ONNX
        files without a module: ONNX Runtime on the CPU running the file itself.
        """
        if self.has_module:
            module = self.module_for("kept").double()
            with torch.no_grad():
                y = module(*(x.double() for x in inputs))
            return tuple(y) if isinstance(y, (tuple, list)) else (y,)
        import onnxruntime as ort

        artifact = self._own_artifact()
        session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
        feed_dtype = torch.float16 if artifact.io == "fp16" else torch.float32
        feed = {n: x.to(feed_dtype).numpy() for n, x in zip(artifact.input_names, inputs)}
        return tuple(torch.from_numpy(y).double() for y in session.run(None, feed))


def _weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:8]


def _load_factory(factory: str):
    module_part, _, function = factory.rpartition(":")
    try:
        if module_part.endswith(".py") or "/" in module_part:
            path = Path(module_part)
            if not path.is_file():
                raise UsageError(f"--model: no file {path}")
            name = f"ccnbench_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
            module = sys.modules.get(name)
            if module is None:  # a file is executed once per process, like an imported module
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec and spec.loader
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_part)
    except ImportError as exc:
        raise UsageError(f"--model: cannot import {module_part!r}: {exc}") from exc
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UsageError(f"--model: {module_part!r} has no callable {function!r}")

    def build_module() -> nn.Module:
        made = fn()
        if not isinstance(made, nn.Module):
            raise CcnbenchError(f"--model: {factory} returned {type(made).__name__}, not a torch.nn.Module")
        return made

    return build_module
