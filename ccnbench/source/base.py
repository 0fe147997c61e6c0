"""The interface every source has (``ModelSource``), and what the sources share.

Each kind of source registers itself under its ``kind`` when its class is defined, so
``ModelSource.from_dict`` (a source coming back from a worker's JSON) and the ``from_*``
constructors find it without this module importing the sources that derive from it.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ccnbench.errors import UsageError
from ccnbench.models import DEFAULT_MERGE, LAYOUTS, MERGE_EVIDENCE_ONLY, MERGE_MODES, ModelSpec

if TYPE_CHECKING:
    from ccnbench.formats.onnx_artifact import Artifact

KINDS = ("spec", "factory", "onnx")


class ModelSource(abc.ABC):
    """What a case runs; ``from_spec``/``from_factory``/``from_onnx``/``from_dict`` build one."""

    kind: ClassVar[str]
    layout: str
    input_shape: tuple[int, ...]
    num_inputs: int
    spec: ModelSpec | None = None
    _kinds: ClassVar[dict[str, Any]] = {}  # kind -> the source class, filled as each is defined

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            ModelSource._kinds[cls.kind] = cls

    # --- constructors ----------------------------------------------------------------------

    @staticmethod
    def from_spec(spec: ModelSpec, layout: str = "kept") -> ModelSource:
        return ModelSource._kinds["spec"](spec, check_layout(layout))

    @staticmethod
    def from_factory(
        factory: str,
        input_shape: tuple[int, ...],
        num_inputs: int = 1,
        layout: str = "kept",
        merge: str = DEFAULT_MERGE,
    ) -> ModelSource:
        """``factory`` is ``package.module:function`` or ``path/to/file.py:function``; ``merge`` is
        what the graph pass may merge in the merged layout (``MERGE_MODES``)."""
        kind = ModelSource._kinds["factory"]
        return kind.create(factory, input_shape, num_inputs, check_layout(layout), check_merge(merge))

    @staticmethod
    def from_onnx(
        path: str | Path, model: str | None = None, saved: tuple[str, str] | None = None
    ) -> ModelSource:
        return ModelSource._kinds["onnx"].create(path, model, saved)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelSource:
        kind = data.get("kind")
        if kind not in ModelSource._kinds:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return ModelSource._kinds[kind].from_data(data)

    # --- what each source answers ----------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def from_data(cls, data: dict[str, Any]) -> ModelSource:
        """The source ``to_dict`` wrote."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """The model's name in tables and file names (never a user's absolute path)."""

    @property
    @abc.abstractmethod
    def digest(self) -> str:
        """A short hash of what the model is: same digest, same outputs."""

    @property
    @abc.abstractmethod
    def output_names(self) -> tuple[str, ...]: ...

    @abc.abstractmethod
    def module_for(self, layout: str) -> nn.Module:
        """A fresh float32 CPU copy of the PyTorch module in ``layout``, in eval mode."""

    @abc.abstractmethod
    def artifact(
        self, precision: str = "fp32", io: str = "fp32", opset: int = 18, artifacts_dir: Path | None = None
    ) -> Artifact:
        """The validated ONNX file of this source (exported once per process, reused on disk)."""

    @abc.abstractmethod
    def oracle(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The outputs every target is graded against, for ``inputs``."""

    @abc.abstractmethod
    def flops_per_sample(self) -> int | None: ...

    # --- shared behaviour ------------------------------------------------------------------

    @property
    def self_reference_target(self) -> str | None:
        """The target whose outputs *are* the oracle (a file without a reference): its cases
        are graded "reference", never "pass". None when the oracle is independent."""
        return None

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

    def module_oracle(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The *kept* module in float64 with the same weights and inputs, so every target, eager
        fp32 included, is measured against the same higher-precision truth."""
        device = oracle_device()
        module = self.module_for("kept").double().to(device)
        with torch.no_grad():
            y = module(*(x.double().to(device) for x in inputs))
        return tuple(t.cpu() for t in (y if isinstance(y, (tuple, list)) else (y,)))

    def module_flops(self) -> int | None:
        """FLOPs of one sample through the module, counted by torch's ``FlopCounterMode``."""
        from torch.utils.flop_counter import FlopCounterMode

        # Built before the counter starts: building a merged module runs forwards of its own
        # (the merge pass proves itself on example inputs), which are not the model's FLOPs.
        module, inputs = self.module(), self.make_inputs(1)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(*inputs)
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


def check_merge(merge: str) -> str:
    if merge not in MERGE_MODES + MERGE_EVIDENCE_ONLY:
        raise UsageError(f"unknown --merge {merge!r}; choose from {', '.join(MERGE_MODES)}")
    return merge


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return layout
