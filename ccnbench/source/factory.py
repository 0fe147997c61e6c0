"""A user's ``nn.Module`` factory as a source: ``package.module:function`` or ``file.py:function``.

The factory's module (it may load a checkpoint) and the graph pass over it are made once per
process, in this module's caches keyed by the factory and its code's hash; callers get copies.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ccnbench.errors import UsageError
from ccnbench.formats.file_names import file_name, precision_tag, weights_digest
from ccnbench.formats.onnx_artifact import Artifact
from ccnbench.formats.onnx_export import DEFAULT_ARTIFACTS, export_module
from ccnbench.models import DEFAULT_MERGE, FusionNet, merge
from ccnbench.source.artifact_cache import artifacts_key, cached_export
from ccnbench.source.base import ModelSource
from ccnbench.source.factory_loading import code_digest, is_file, load_factory

if TYPE_CHECKING:
    from ccnbench.models.graph_merge import MergeOutcome

_modules: dict[tuple[str, str], tuple[nn.Module, tuple[str, ...]]] = {}
_merges: dict[tuple[str, str, str], MergeOutcome] = {}
# --merge's evidence-only modes (models.MERGE_EVIDENCE_ONLY): graph_merge's fold for each.
_FOLDS = {"partial-batch": "batch", "partial-per-child": "per-child"}


@dataclass(frozen=True)
class FactorySource(ModelSource):
    """A user's ``nn.Module`` factory: ``package.module:function`` or ``file.py:function``."""

    factory: str
    input_shape: tuple[int, ...]
    num_inputs: int = 1
    layout: str = "kept"
    code_digest: str = ""  # hash of the factory file's bytes: edited code is a different model
    # What the graph pass may merge in the merged layout (models.MERGE_MODES): the same model, so
    # not part of the digest; results say what merged in ``details.merge``.
    merge: str = DEFAULT_MERGE
    kind: ClassVar[str] = "factory"

    @classmethod
    def create(
        cls,
        factory: str,
        input_shape: tuple[int, ...],
        num_inputs: int,
        layout: str,
        merge: str = DEFAULT_MERGE,
    ) -> FactorySource:
        if ":" not in factory:
            raise UsageError(f"--model {factory!r} must be package.module:function or file.py:function")
        if not input_shape or any(d < 1 for d in input_shape):
            raise UsageError(f"--input-shape must be positive sizes like 1x24x24x24, got {input_shape}")
        if num_inputs < 1:
            raise UsageError(f"--branches must be >= 1, got {num_inputs}")
        # Import now so a typo is a clear usage error, but do not call the factory here: a broken
        # one must fail inside a worker, not take the sweep down with it.
        load_factory(factory)
        return cls(factory, tuple(input_shape), num_inputs, layout, code_digest(factory), merge)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> FactorySource:
        return cls(
            data["factory"], tuple(data["input_shape"]), int(data.get("num_inputs", 1)),
            data.get("layout", "kept"), data.get("code_digest", ""), data.get("merge", DEFAULT_MERGE),
        )  # fmt: skip

    @property
    def label(self) -> str:
        module_part, _, function = self.factory.rpartition(":")
        if is_file(module_part):  # the file's name, never the user's absolute path
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
            module = load_factory(self.factory)().eval()
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
        from ccnbench.models.graph_merge import merge_branches  # torch.fx: only when merging

        key = (self.factory, self.code_digest, self.merge)
        if key not in _merges:
            module, inputs = copy.deepcopy(self._built()[0]), self.make_inputs(2, seed=0)
            fold = _FOLDS.get(self.merge, "once")
            _merges[key] = merge_branches(module, inputs, partial=self.merge != "whole", fold=fold)
        return _merges[key]

    def layout_note(self) -> dict[str, Any] | None:
        if self.layout != "merged" or isinstance(self._built()[0], FusionNet):
            return None
        return {**self._merge_outcome().to_dict(), "mode": self.merge}

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
        layout = self.graph_layout  # a file says what its graph is, whatever was asked for
        key = (
            self.factory,
            self.code_digest,
            layout,
            self.merge,
            precision,
            io,
            opset,
            artifacts_key(artifacts_dir),
        )

        def export_now() -> Artifact:
            module = self.module()
            shape = "x".join(map(str, self.input_shape))
            # The evidence's other forms have the weights of the default: the name tells the files apart.
            form = _FOLDS.get(self.merge)
            tag = f"{layout}-{form}" if layout == "merged" and form else layout
            what = ["user", _safe(self.label.removeprefix("user:")), tag, f"{self.num_inputs}x{shape}"]
            what += [precision_tag(precision, io), f"op{opset}"]
            # The weights are part of the name: a changed checkpoint never reuses a stale export.
            out = Path(artifacts_dir or DEFAULT_ARTIFACTS) / file_name(what, weights_digest(module), ".onnx")
            return export_module(
                module, self.input_names, self.input_shape, out, self.output_names,
                precision, io, opset, force=force, layout=layout,
            )  # fmt: skip

        return cached_export(key, export_now, force)

    def oracle(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return self.module_oracle(inputs)

    def flops_per_sample(self) -> int | None:
        return self.module_flops()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "layout": self.layout, "factory": self.factory,
            "input_shape": list(self.input_shape), "num_inputs": self.num_inputs, "code_digest": self.code_digest,
            "merge": self.merge,
        }  # fmt: skip


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).replace(".py", "")
