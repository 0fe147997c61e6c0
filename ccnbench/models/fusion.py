"""The five fusion variants in their *kept* form: written as a person would, one op per branch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ccnbench.models.blocks import Extractor
from ccnbench.models.spec import ModelSpec


class FusionNet(nn.Module):
    """Base: every variant takes ``spec.num_inputs`` tensors of shape (B, 1, D, H, W)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec

    def _inputs_for_branches(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """One input per branch; a shared input is handed to every branch."""
        if len(inputs) != self.spec.num_inputs:
            raise ValueError(f"{self.spec.label} takes {self.spec.num_inputs} input(s), got {len(inputs)}")
        return inputs * self.spec.branches if self.spec.input_mode == "shared" else inputs


class EarlyFusion(FusionNet):
    """Inputs stacked as channels into one extractor: the baseline every fusion is compared with."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.extractor = Extractor(spec, in_channels=spec.branches)
        self.classifier = nn.Linear(spec.features_per_extractor, spec.classes)

    def forward(self, *inputs: Tensor) -> Tensor:
        x = torch.cat(self._inputs_for_branches(inputs), dim=1)
        return self.classifier(self.extractor(x).flatten(1))


class FeatureFusion(FusionNet):
    """One shared extractor applied to each input; features concatenated on channels."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.extractor = Extractor(spec)
        self.classifier = nn.Linear(spec.branches * spec.features_per_extractor, spec.classes)

    def forward(self, *inputs: Tensor) -> Tensor:
        features = torch.cat([self.extractor(x) for x in self._inputs_for_branches(inputs)], dim=1)
        return self.classifier(features.flatten(1))


class ModelFusion(FusionNet):
    """A separate extractor per branch, features concatenated on channels, one classifier."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.extractors = nn.ModuleList(Extractor(spec) for _ in range(spec.branches))
        self.classifier = nn.Linear(spec.branches * spec.features_per_extractor, spec.classes)

    def forward(self, *inputs: Tensor) -> Tensor:
        branches = zip(self.extractors, self._inputs_for_branches(inputs))
        features = torch.cat([extract(x) for extract, x in branches], dim=1)
        return self.classifier(features.flatten(1))


class SingleCNN(nn.Module):
    """One complete model (extractor + classifier): a member of a decision fusion."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.extractor = Extractor(spec)
        self.classifier = nn.Linear(spec.features_per_extractor, spec.classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.extractor(x).flatten(1))


class DecisionFusion(FusionNet):
    """N complete models whose logits are combined by a fixed, normalised weighted sum."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.members = nn.ModuleList(SingleCNN(spec) for _ in range(spec.branches))
        self.register_buffer("weights", torch.tensor(spec.normalized_weights))

    def forward(self, *inputs: Tensor) -> Tensor:
        logits = [member(x) for member, x in zip(self.members, self._inputs_for_branches(inputs))]
        # (B, classes, N) @ (N,): one MatMul in the exported graph, not N Mul + Add.
        return torch.stack(logits, dim=-1) @ self.weights


class MultiTask(FusionNet):
    """A shared trunk over every input, then a classification head and a regression head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.trunk = Extractor(spec)
        features = spec.branches * spec.features_per_extractor
        self.classifier = nn.Linear(features, spec.classes)
        self.regressor = nn.Linear(features, 1)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        features = torch.cat([self.trunk(x) for x in self._inputs_for_branches(inputs)], dim=1).flatten(1)
        return self.classifier(features), self.regressor(features)


KEPT_CLASSES: dict[str, type[FusionNet]] = {
    "early": EarlyFusion,
    "feature": FeatureFusion,
    "model": ModelFusion,
    "decision": DecisionFusion,
    "multitask": MultiTask,
}
