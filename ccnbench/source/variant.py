"""One of ccnbench's fusion variants as a source: everything follows from its spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from ccnbench.formats.onnx_artifact import Artifact
from ccnbench.formats.onnx_export import DEFAULT_ARTIFACTS, export
from ccnbench.models import ModelSpec, build, flops_per_sample
from ccnbench.source.artifact_cache import artifacts_key, cached_export
from ccnbench.source.base import ModelSource


@dataclass(frozen=True)
class VariantSource(ModelSource):
    """One of ccnbench's fusion variants: everything follows from its spec."""

    spec: ModelSpec  # type: ignore[assignment]  # never None here
    layout: str = "kept"
    # Read from the spec (not arguments); fields so every source has them as plain attributes.
    input_shape: tuple[int, ...] = field(init=False, repr=False, compare=False)
    num_inputs: int = field(init=False, repr=False, compare=False)
    kind: ClassVar[str] = "spec"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", self.spec.input_shape)
        object.__setattr__(self, "num_inputs", self.spec.num_inputs)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> VariantSource:
        return cls(ModelSpec.from_dict(data["spec"]), data.get("layout", "kept"))

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
        key = (self.digest, self.layout, precision, io, opset, artifacts_key(artifacts_dir))
        out = Path(artifacts_dir or DEFAULT_ARTIFACTS)
        return cached_export(
            key, lambda: export(self.spec, self.layout, precision, opset=opset, out_dir=out, io=io)
        )

    def layout_note(self) -> dict[str, Any] | None:
        """Said only when the merged layout is the kept graph (early fusion, or one branch): then
        kept and merged are one format, and ``recommend`` weighs them as one."""
        if self.layout != "merged" or self.spec.has_branches:
            return None
        from ccnbench.models.graph_merge import MergeOutcome  # torch.fx: only for this note

        why = "one branch" if self.spec.branches == 1 else "the inputs are stacked as channels"
        reason = f"no parallel branches to merge ({why}): the merged module is the kept one"
        return MergeOutcome(nn.Identity(), merged=False, reason=reason).to_dict()

    def oracle(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return self.module_oracle(inputs)

    def oracle_is_cacheable(self) -> bool:
        return True  # the weights are a function of the spec

    def flops_per_sample(self) -> int | None:
        return flops_per_sample(self.spec)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layout": self.layout, "spec": self.spec.to_dict()}
