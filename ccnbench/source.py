"""What a case runs: one of ccnbench's variants, a user's nn.Module factory, or a user's ONNX file.

Three sources behind one interface (``ModelSource``): each knows its own label, digest, module,
ONNX artifact and oracle. Sources are frozen plain data: they cross into worker processes as
JSON (``to_dict``/``ModelSource.from_dict``). Whatever is expensive to make (a factory's module,
a file's description) lives in per-process caches in this module, keyed by the source's
identity, never inside the source itself.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.models import LAYOUTS, FusionNet, ModelSpec, build, flops_per_sample, merge

if TYPE_CHECKING:
    from ccnbench.export import Artifact
    from ccnbench.models.graph_merge import MergeOutcome
    from ccnbench.reference import SavedReference

KINDS = ("spec", "factory", "onnx")

# Per-process caches. A worker builds a user's module once (the factory may load a checkpoint)
# and describes an ONNX file once; callers get copies.
_modules: dict[tuple[str, str], tuple[nn.Module, tuple[str, ...]]] = {}
_artifacts: dict[tuple[Any, ...], Artifact] = {}
_merges: dict[tuple[str, str], MergeOutcome] = {}


def _resolved(artifacts_dir: Path | str | None) -> str:
    """The artifacts folder as a cache key: absolute, so a relative folder seen from another
    working directory is another folder."""
    from ccnbench.export import DEFAULT_ARTIFACTS

    return str(Path(artifacts_dir or DEFAULT_ARTIFACTS).resolve())


def _cached(key: tuple[Any, ...]) -> bool:
    """An export described earlier in this process whose file is still on disk."""
    artifact = _artifacts.get(key)
    return artifact is not None and Path(artifact.path).exists()


class ModelSource:
    """The interface every source has; ``from_spec``/``from_factory``/``from_onnx`` build one."""

    kind: ClassVar[str]
    layout: str
    input_shape: tuple[int, ...]
    num_inputs: int
    spec: ModelSpec | None = None
    #: The target whose outputs *are* the oracle (a file without a reference): its cases are
    #: graded "reference", never "pass".
    self_reference_target: ClassVar[str | None] = None

    @staticmethod
    def from_spec(spec: ModelSpec, layout: str = "kept") -> VariantSource:
        return VariantSource(spec, _layout(layout))

    @staticmethod
    def from_factory(
        factory: str, input_shape: tuple[int, ...], num_inputs: int = 1, layout: str = "kept"
    ) -> FactorySource:
        """``factory`` is ``package.module:function`` or ``path/to/file.py:function``."""
        return FactorySource.create(factory, input_shape, num_inputs, _layout(layout))

    @staticmethod
    def from_onnx(
        path: str | Path, model: str | None = None, saved: tuple[str, str] | None = None
    ) -> OnnxFileSource:
        return OnnxFileSource.create(path, model, saved)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelSource:
        kind = data.get("kind")
        if kind == "spec":
            return VariantSource(ModelSpec.from_dict(data["spec"]), data.get("layout", "kept"))
        if kind == "factory":
            return FactorySource(
                data["factory"], tuple(data["input_shape"]), int(data.get("num_inputs", 1)),
                data.get("layout", "kept"), data.get("code_digest", ""),
            )  # fmt: skip
        if kind == "onnx":
            return OnnxFileSource(
                data["onnx_path"], data["sha256"], data.get("layout", "kept"), tuple(data["input_shape"]),
                int(data["num_inputs"]), data.get("model"), tuple(data["saved"]) if data.get("saved") else None,
            )  # fmt: skip
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    # --- shared behaviour ------------------------------------------------------------------

    @property
    def has_module(self) -> bool:
        return True

    @property
    def precision(self) -> str | None:
        """A file's own precision; None for sources that can be exported at any."""
        return None

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("input",) if self.num_inputs == 1 else tuple(f"input_{i}" for i in range(self.num_inputs))

    def module(self) -> nn.Module:
        """The PyTorch module in this source's layout: eval mode, float32, CPU, a fresh copy."""
        return self.module_for(self.layout)

    def make_inputs(self, batch: int, seed: int = 0) -> tuple[Tensor, ...]:
        """Seeded float32 inputs on the CPU, the same for every target of a case."""
        generator = torch.Generator().manual_seed(seed * 7919 + batch)
        return tuple(
            torch.randn(batch, *self.input_shape, generator=generator) for _ in range(self.num_inputs)
        )

    def fixed_batches(self) -> tuple[int, ...] | None:
        """Batch sizes this source can only run at (saved reference data), or None for any."""
        return None

    def layout_note(self) -> dict[str, Any] | None:
        """What this source's layout did to the model, for the results (None: nothing to say)."""
        return None

    @property
    def graph_layout(self) -> str:
        """The layout the module's graph really has, which files are stamped and named with."""
        return self.layout

    def oracle_is_cacheable(self) -> bool:
        """Whether the oracle's outputs are a function of ``digest`` alone (safe to cache on disk)."""
        return False

    def _module_oracle(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        # The *kept* module in float64 with the same weights and inputs, so every target, eager
        # fp32 included, is measured against the same higher-precision truth.
        device = oracle_device()
        module = self.module_for("kept").double().to(device)
        with torch.no_grad():
            y = module(*(x.double().to(device) for x in inputs))
        return tuple(t.cpu() for t in (y if isinstance(y, (tuple, list)) else (y,)))

    def _module_flops(self) -> int | None:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            self.module()(*self.make_inputs(1))
        return int(counter.get_total_flops()) or None


def oracle_device() -> str:
    """Where the float64 oracle runs: the CPU, or ``CCNBENCH_ORACLE_DEVICE`` (``cuda`` on a GPU
    machine, where a medium N = 8 model costs 20 s on the CPU and well under one on the device;
    float64 has no TF32 or reduced-precision path on either, so the truth is the same)."""
    device = os.environ.get("CCNBENCH_ORACLE_DEVICE", "cpu")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"CCNBENCH_ORACLE_DEVICE must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        return "cpu"
    return device


@dataclass(frozen=True)
class VariantSource(ModelSource):
    """One of ccnbench's fusion variants: everything follows from its spec."""

    spec: ModelSpec  # type: ignore[assignment]
    layout: str = "kept"
    kind: ClassVar[str] = "spec"

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.spec.input_shape

    @property
    def num_inputs(self) -> int:  # type: ignore[override]
        return self.spec.num_inputs

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def digest(self) -> str:
        return self.spec.digest()

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.spec.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.spec.output_names

    def module_for(self, layout: str) -> nn.Module:
        return build(self.spec, layout)

    def artifact(
        self, precision: str = "fp32", io: str = "fp32", opset: int = 18, artifacts_dir: Path | None = None
    ) -> Artifact:
        from ccnbench.export import DEFAULT_ARTIFACTS, export

        key = (self.digest, self.layout, precision, io, opset, _resolved(artifacts_dir))
        if not _cached(key):
            out = Path(artifacts_dir or DEFAULT_ARTIFACTS)
            _artifacts[key] = export(self.spec, self.layout, precision, opset=opset, out_dir=out, io=io)
        return _artifacts[key]

    def oracle(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return self._module_oracle(inputs)

    def oracle_is_cacheable(self) -> bool:
        return True  # the weights are a function of the spec

    def flops_per_sample(self) -> int | None:
        return flops_per_sample(self.spec)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layout": self.layout, "spec": self.spec.to_dict()}


@dataclass(frozen=True)
class FactorySource(ModelSource):
    """A user's ``nn.Module`` factory: ``package.module:function`` or ``file.py:function``."""

    factory: str
    input_shape: tuple[int, ...]
    num_inputs: int = 1
    layout: str = "kept"
    code_digest: str = ""  # hash of the factory file's bytes: edited code is a different model
    kind: ClassVar[str] = "factory"

    @classmethod
    def create(
        cls, factory: str, input_shape: tuple[int, ...], num_inputs: int, layout: str
    ) -> FactorySource:
        if ":" not in factory:
            raise UsageError(f"--model {factory!r} must be package.module:function or file.py:function")
        if not input_shape or any(d < 1 for d in input_shape):
            raise UsageError(f"--input-shape must be positive sizes like 1x24x24x24, got {input_shape}")
        if num_inputs < 1:
            raise UsageError(f"--branches must be >= 1, got {num_inputs}")
        # Import now so a typo is a clear usage error, but do not call the factory here: a broken
        # one must fail inside a worker, not take the sweep down with it.
        _load_factory(factory)
        return cls(factory, tuple(input_shape), num_inputs, layout, _code_digest(factory))

    @property
    def label(self) -> str:
        module_part, _, function = self.factory.rpartition(":")
        if _is_file(module_part):  # the file's name, never the user's absolute path
            return f"user:{Path(module_part).name}:{function}"
        return f"user:{self.factory}"

    @property
    def digest(self) -> str:
        text = "|".join(
            [self.label, self.code_digest, "x".join(map(str, self.input_shape)), str(self.num_inputs)]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._built()[1]

    def _built(self) -> tuple[nn.Module, tuple[str, ...]]:
        """The factory's module and its output names, made once per process.

        Building runs one forward pass at batch 1: the output count is only known by running it,
        and a module that cannot run its own input shape is better found here than per target.
        """
        key = (self.factory, self.code_digest)
        if key not in _modules:
            module = _load_factory(self.factory)().eval()
            with torch.no_grad():
                y = module(*self.make_inputs(1, seed=0))
            count = len(y) if isinstance(y, (tuple, list)) else 1
            names = ("output",) if count == 1 else tuple(f"output_{i}" for i in range(count))
            _modules[key] = (module, names)
        return _modules[key]

    def module_for(self, layout: str) -> nn.Module:
        # Backends move and cast the module they are given in place: each caller gets a copy.
        module = copy.deepcopy(self._built()[0])
        if layout == "kept":
            return module
        if isinstance(module, FusionNet):
            return merge(module)
        # Any other module: the general graph pass. What it cannot prove identical stays kept,
        # with the reason in ``layout_note``; the case still runs (as the module written).
        return copy.deepcopy(self._merge_outcome().module)

    def _merge_outcome(self) -> MergeOutcome:
        """The graph pass over the factory's module, once per process (it traces and runs it)."""
        from ccnbench.models.graph_merge import merge_branches

        key = (self.factory, self.code_digest)
        if key not in _merges:
            _merges[key] = merge_branches(copy.deepcopy(self._built()[0]), self.make_inputs(2, seed=0))
        return _merges[key]

    def layout_note(self) -> dict[str, Any] | None:
        if self.layout != "merged" or isinstance(self._built()[0], FusionNet):
            return None
        return self._merge_outcome().to_dict()

    @property
    def graph_layout(self) -> str:
        """The layout the module really has: ``merged`` only when something merged (a merge
        that found nothing runs, and exports, the module as written: ``kept``)."""
        note = self.layout_note()
        return "kept" if note is not None and not note["merged"] else self.layout

    def artifact(
        self,
        precision: str = "fp32",
        io: str = "fp32",
        opset: int = 18,
        artifacts_dir: Path | None = None,
        force: bool = False,
    ) -> Artifact:
        from ccnbench.export import DEFAULT_ARTIFACTS, export_module

        layout = self.graph_layout  # a file says what its graph is, whatever was asked for
        key = (self.factory, self.code_digest, layout, precision, io, opset, _resolved(artifacts_dir))
        if force or not _cached(key):
            module = self.module()
            name = _safe(self.label.removeprefix("user:"))
            shape = "x".join(map(str, self.input_shape))
            io_tag = "-io16" if io == "fp16" else ""
            # The weights are part of the name: a changed checkpoint never reuses a stale export.
            stem = f"user-{name}-{layout}-{self.num_inputs}x{shape}-{precision}{io_tag}-op{opset}-{weights_digest(module)}"
            out = Path(artifacts_dir or DEFAULT_ARTIFACTS) / f"{stem}.onnx"
            _artifacts[key] = export_module(
                module,
                self.input_names,
                self.input_shape,
                out,
                self.output_names,
                precision,
                io,
                opset,
                force=force,
                layout=layout,
            )
        return _artifacts[key]

    def oracle(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return self._module_oracle(inputs)

    def flops_per_sample(self) -> int | None:
        return self._module_flops()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "layout": self.layout, "factory": self.factory,
            "input_shape": list(self.input_shape), "num_inputs": self.num_inputs, "code_digest": self.code_digest,
        }  # fmt: skip


@dataclass(frozen=True)
class OnnxFileSource(ModelSource):
    """A user's ONNX file, identified by the hash of its bytes, with the reference it is graded against.

    The reference is, in order of preference: the PyTorch module it was exported from
    (``model``, run in float64 like ccnbench's own), saved inputs and outputs (``saved``:
    Polygraphy JSON or .npz), or, with neither, ONNX Runtime on the CPU running the file itself,
    which checks nothing independent: that target is graded "reference".
    """

    path: str
    sha256: str
    layout: str
    input_shape: tuple[int, ...]
    num_inputs: int
    model: str | None = None
    saved: tuple[str, str] | None = None  # (inputs file, outputs file)
    kind: ClassVar[str] = "onnx"

    @classmethod
    def create(cls, path: str | Path, model: str | None, saved: tuple[str, str] | None) -> OnnxFileSource:
        from ccnbench.export import load_artifact

        artifact = load_artifact(path)
        shapes = {tuple(s[1:]) for s in artifact.input_shapes}
        if len(shapes) != 1:
            raise UsageError(f"{path}: inputs of different shapes {sorted(shapes)} are not supported")
        if any(not isinstance(s[0], str) for s in artifact.input_shapes):
            raise UsageError(f"{path}: the batch dimension is fixed; export with a dynamic batch (dim 0)")
        if model and saved:
            raise UsageError("give either --model or --load-outputs as the reference of --onnx, not both")
        shape = tuple(int(d) for d in shapes.pop())
        if model:
            ref = FactorySource.create(model, shape, len(artifact.input_names), "kept")
            model = ref.factory
        source = cls(
            str(Path(path).resolve()),
            artifact.sha256,
            artifact.layout if artifact.layout in LAYOUTS else "kept",
            shape,
            len(artifact.input_names),
            model,
            (str(Path(saved[0]).resolve()), str(Path(saved[1]).resolve())) if saved else None,
        )
        _artifacts[("onnx", source.sha256)] = artifact
        if saved:
            source.saved_reference()  # a bad file is a usage error now, not a failed case later
        return source

    @property
    def self_reference_target(self) -> str | None:  # type: ignore[override]
        return None if self.model or self.saved else "ort:cpu"

    @property
    def label(self) -> str:
        return f"onnx:{Path(self.path).name}"

    @property
    def digest(self) -> str:
        return self.sha256[:8]

    @property
    def has_module(self) -> bool:
        return self.model is not None

    @property
    def precision(self) -> str:
        """The file's own precision: it runs at that precision only."""
        return self._own().precision

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._own().input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._own().output_names

    def _own(self) -> Artifact:
        from ccnbench.export import load_artifact

        key = ("onnx", self.sha256)
        if key not in _artifacts:
            artifact = load_artifact(self.path)
            if artifact.sha256 != self.sha256:
                raise CcnbenchError(f"{self.path} changed since the sweep started (its content hash differs)")
            _artifacts[key] = artifact
        return _artifacts[key]

    def _reference_module(self) -> FactorySource:
        assert self.model is not None
        return FactorySource(self.model, self.input_shape, self.num_inputs, "kept", _code_digest(self.model))

    def saved_reference(self) -> SavedReference:
        from ccnbench.reference import load_saved

        assert self.saved is not None
        return load_saved(self.saved[0], self.saved[1], self.input_names, self.output_names)

    def module_for(self, layout: str) -> nn.Module:
        if self.model is None:
            raise UsageError(f"{self.label} is an ONNX file: targets that run a PyTorch module need --model")
        return self._reference_module().module_for(layout)

    def artifact(
        self, precision: str = "fp32", io: str = "fp32", opset: int = 18, artifacts_dir: Path | None = None
    ) -> Artifact:
        own = self._own()
        if own.precision != precision:
            raise UsageError(
                f"{self.label} is a {own.precision} ONNX file; it cannot be run at {precision} "
                "(give an ONNX file of that precision)"
            )
        return own

    def make_inputs(self, batch: int, seed: int = 0) -> tuple[Tensor, ...]:
        if self.saved is None:
            return super().make_inputs(batch, seed)
        saved = self.saved_reference()
        if batch != saved.batch:
            raise UsageError(
                f"the saved reference inputs have batch {saved.batch}; run with --batch {saved.batch}"
            )
        return saved.inputs

    def fixed_batches(self) -> tuple[int, ...] | None:
        return (self.saved_reference().batch,) if self.saved else None

    def oracle(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if self.model is not None:
            return self._reference_module()._module_oracle(inputs)
        if self.saved is not None:
            return self.saved_reference().outputs
        import onnxruntime as ort

        artifact = self._own()
        session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
        feed_dtype = torch.float16 if artifact.io == "fp16" else torch.float32
        feed = {n: x.to(feed_dtype).numpy() for n, x in zip(artifact.input_names, inputs)}
        return tuple(torch.from_numpy(y).double() for y in session.run(None, feed))

    def flops_per_sample(self) -> int | None:
        return self._reference_module()._module_flops() if self.model else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "layout": self.layout, "onnx_path": self.path, "sha256": self.sha256,
            "input_shape": list(self.input_shape), "num_inputs": self.num_inputs, "model": self.model,
            "saved": list(self.saved) if self.saved else None,
        }  # fmt: skip


def _layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return layout


def weights_digest(module: nn.Module) -> str:
    """A short hash of a module's class and weights: edited weights never reuse a stale file."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:8]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).replace(".py", "")


def _is_file(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part


def _code_digest(factory: str) -> str:
    """The factory file's content hash ('' for an installed module: its version is its identity)."""
    module_part = factory.rpartition(":")[0]
    if not _is_file(module_part):
        return ""
    try:
        return hashlib.sha256(Path(module_part).read_bytes()).hexdigest()[:12]
    except OSError:
        return ""


def _load_factory(factory: str):
    module_part, _, function = factory.rpartition(":")
    try:
        if _is_file(module_part):
            module = _exec_file(Path(module_part))
        else:
            module = importlib.import_module(module_part)
    except ImportError as exc:
        raise UsageError(f"--model: cannot import {module_part!r}: {exc}") from exc
    except SyntaxError as exc:
        raise UsageError(f"--model: {Path(module_part).name} line {exc.lineno}: {exc.msg}") from exc
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UsageError(f"--model: {module_part!r} has no callable {function!r}")

    def build_module() -> nn.Module:
        made = fn()
        if not isinstance(made, nn.Module):
            raise CcnbenchError(f"--model: {factory} returned {type(made).__name__}, not a torch.nn.Module")
        return made

    return build_module


def _exec_file(path: Path) -> Any:
    """A user's .py file, executed once per process (like an imported module)."""
    if not path.is_file():
        raise UsageError(f"--model: no file {path}")
    name = f"ccnbench_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]  # a broken file must not look loaded next time
            raise
    return module
