"""A user's ONNX file as a source, identified by the hash of its bytes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.formats.onnx_artifact import Artifact, load_artifact
from ccnbench.models import LAYOUTS
from ccnbench.source.artifact_cache import cached_description, remember
from ccnbench.source.base import ModelSource
from ccnbench.source.factory import FactorySource
from ccnbench.source.factory_loading import code_digest

if TYPE_CHECKING:
    from ccnbench.formats.saved_reference import SavedReference

# With neither a module nor saved outputs, this target's outputs are the reference.
SELF_REFERENCE_TARGET = "ort:cpu"


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
            model = FactorySource.create(model, shape, len(artifact.input_names), "kept").factory
        source = cls(
            str(Path(path).resolve()),
            artifact.sha256,
            artifact.layout if artifact.layout in LAYOUTS else "kept",
            shape,
            len(artifact.input_names),
            model,
            (str(Path(saved[0]).resolve()), str(Path(saved[1]).resolve())) if saved else None,
        )
        remember(("onnx", source.sha256), artifact)
        if saved:
            source.saved_reference()  # a bad file is a usage error now, not a failed case later
        return source

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> OnnxFileSource:
        return cls(
            data["onnx_path"], data["sha256"], data.get("layout", "kept"), tuple(data["input_shape"]),
            int(data["num_inputs"]), data.get("model"), tuple(data["saved"]) if data.get("saved") else None,
        )  # fmt: skip

    @property
    def self_reference_target(self) -> str | None:
        return None if self.model or self.saved else SELF_REFERENCE_TARGET

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
        def describe() -> Artifact:
            artifact = load_artifact(self.path)
            if artifact.sha256 != self.sha256:
                raise CcnbenchError(f"{self.path} changed since the sweep started (its content hash differs)")
            return artifact

        return cached_description(("onnx", self.sha256), describe)

    def _reference_module(self) -> FactorySource:
        assert self.model is not None
        return FactorySource(self.model, self.input_shape, self.num_inputs, "kept", code_digest(self.model))

    def saved_reference(self) -> SavedReference:
        from ccnbench.formats.saved_reference import load_saved

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
            return self._reference_module().module_oracle(inputs)
        if self.saved is not None:
            return self.saved_reference().outputs
        # Sources sit below the backends, so the file run by its self-reference target is the
        # oracle's job (ccnbench.measure.oracle), not this class's.
        raise CcnbenchError(f"{self.label} has no reference: its oracle is {SELF_REFERENCE_TARGET} itself")

    def flops_per_sample(self) -> int | None:
        return self._reference_module().module_flops() if self.model else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "layout": self.layout, "onnx_path": self.path, "sha256": self.sha256,
            "input_shape": list(self.input_shape), "num_inputs": self.num_inputs, "model": self.model,
            "saved": list(self.saved) if self.saved else None,
        }  # fmt: skip
