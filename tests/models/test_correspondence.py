"""The merge's own correspondence: every kept layer maps to the merged layer doing its work."""

import pytest
import torch
from torch import nn

from ccnbench.models import VARIANTS, build, spec_from_preset
from ccnbench.models.correspondence import builtin_renamer, graph_renamers
from ccnbench.models.graph_merge import merge_branches
from tests.fixtures.user_models import two_view

_LAYERS = (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.LeakyReLU, nn.Linear)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_kept_layer_maps_to_a_merged_layer_of_its_kind(variant):
    spec = spec_from_preset("tiny", variant)
    kept, merged = build(spec, "kept"), build(spec, "merged")
    rename = builtin_renamer(kept)
    merged_modules = dict(merged.named_modules())
    layers = [(p, m) for p, m in kept.named_modules() if isinstance(m, _LAYERS)]
    assert layers
    for path, module in layers:
        assert type(merged_modules[rename(path)]) is type(module), path
    # The branches of a layer meet in one merged layer (the point of merging).
    convs = {rename(p) for p, m in layers if isinstance(m, nn.Conv3d)}
    assert len(convs) == sum(isinstance(m, nn.Conv3d) for m in merged.modules())


def test_a_users_merged_branches_map_into_the_stacked_module_with_its_inner_layer_folded():
    module = two_view().eval()
    outcome = merge_branches(module, (torch.randn(2, 1, 10, 10, 10), torch.randn(2, 1, 10, 10, 10)))
    assert outcome.merged
    rename, canonical = graph_renamers(outcome.module)
    stacked = rename("a.0")
    assert stacked == rename("b.0") != "a.0"
    assert canonical(stacked + ".layer") == stacked  # the grouped Conv inside its wrapper
    assert stacked in dict(outcome.module.named_modules())
    assert rename("head") == "head"
