"""Partial merges: sibling branches that differ somewhere, what is the same in them merged, and the reasons."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import Tensor, nn

from ccnbench.formats.onnx_export import export_module
from ccnbench.models.branch_modules import FoldedCall, FoldedStack, PackedStack, StackedBranches
from ccnbench.models.correspondence import graph_renamers
from ccnbench.models.graph_merge import merge_branches

from helpers import FIXTURES

pytest.importorskip("monai")

_spec = importlib.util.spec_from_file_location("library_models", FIXTURES / "library_models.py")
library_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(library_models)

_LAYERS = (nn.Conv3d, nn.BatchNorm3d, nn.Linear)


def _inputs(n: int = 2, shape=(1, 16, 16, 16), batch: int = 2, dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, *shape, generator=g).to(dtype) for _ in range(n))


def _max_error(a: nn.Module, b: nn.Module, xs) -> float:
    with torch.no_grad():
        ya, yb = a(*xs), b(*xs)
    assert ya.shape == yb.shape and ya.abs().max() > 1e-6
    return float((ya - yb).abs().max())


def _agrees_in_float64(kept: nn.Module, merged: nn.Module, shapes=((1, 16, 16, 16),) * 2) -> None:
    kept64, merged64 = copy.deepcopy(kept).double(), copy.deepcopy(merged).double()
    for batch in (1, 3):
        g = torch.Generator().manual_seed(7)
        xs = tuple(torch.randn(batch, *s, generator=g, dtype=torch.float64) for s in shapes)
        assert _max_error(kept64, merged64, xs) <= 1e-10


def _conv_count(module: nn.Module, shape, path) -> int:
    artifact = export_module(
        copy.deepcopy(module), ["input_0", "input_1"], shape, path, ["logits"], force=True
    )
    return artifact.conv_count


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm3d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.norm(self.conv(x)))


class Trunk(nn.Module):
    """A stem, then layers whose structure does not depend on the stem."""

    def __init__(self, stem: int = 3, channels_in: int = 1, stride: int = 1, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv3d(channels_in, width, stem, stride=stride, padding=stem // 2)
        self.norm = nn.BatchNorm3d(width)
        self.act = nn.ReLU(inplace=True)
        self.layer1 = Block(width)
        self.layer2 = Block(width)
        self.layer3 = Block(width)
        self.pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer1(self.act(self.norm(self.stem(x))))
        x = self.layer3(self.layer2(x))
        return self.pool(x).flatten(1)


class TwoStreams(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module, width: int = 4) -> None:
        super().__init__()
        self.streams = nn.ModuleList([a, b])
        self.head = nn.Linear(2 * width, 3)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.head(torch.cat([self.streams[0](x), self.streams[1](y)], dim=1))


def _trained(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return library_models._trained_like(model)


def _stems(a: int = 5, b: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return _trained(TwoStreams(Trunk(a), Trunk(b)))


STEMS = (
    "2 × Trunk (streams.0, streams.1): stem kept (4×1×5×5×5 vs 4×1×3×3×3); "
    "norm, layer1–layer3 merged: 3 of 4 Conv → 3 grouped Conv"
)


# --- what merges, and that it computes the same function -----------------------------------------


@pytest.mark.parametrize(
    ("fold", "form"), [("once", "channels"), ("batch", "batch"), ("per-child", "per-child")]
)
def test_branches_that_differ_in_the_stem_merge_the_rest_and_agree_in_float64(fold, form):
    kept = _stems()
    outcome = merge_branches(kept, _inputs(), fold=fold)
    assert outcome.merged and outcome.partial, outcome.reason
    assert outcome.description == STEMS
    (group,) = outcome.to_dict()["groups"]
    assert group["rule"] == "partial" and group["fold"] == form
    assert group["kept_children"] == [{"child": "stem", "why": "4×1×5×5×5 vs 4×1×3×3×3"}]
    assert group["merged_children"] == ["norm", "layer1", "layer2", "layer3"]
    assert (group["convs_each"], group["convs_merged"]) == (4, 3)
    _agrees_in_float64(kept, outcome.module)


def _count(gm, what: str) -> int:
    return sum(
        n.op in ("call_function", "call_method") and getattr(n.target, "__name__", n.target) == what
        for n in gm.graph.nodes
    )


def test_folding_once_folds_and_splits_once_folding_per_child_around_each_child():
    kept = _stems()
    channels, batch, per_child = (
        merge_branches(kept, _inputs(), fold=f).module for f in ("once", "batch", "per-child")
    )
    # After the stems, before the head (whose torch.cat is the user's own).
    assert (_count(channels, "cat"), _count(channels, "chunk"), _count(channels, "stack")) == (2, 1, 0)
    assert (_count(batch, "stack"), _count(batch, "unbind")) == (1, 1)
    assert _count(per_child, "stack") == _count(per_child, "unbind") == 0  # each StackedBranches folds itself
    assert {PackedStack, FoldedCall} <= {type(m) for m in channels.modules()}  # ReLU, pooling run folded too
    assert {FoldedStack, FoldedCall} <= {type(m) for m in batch.modules()}
    assert not any(type(m) is StackedBranches for m in [*channels.modules(), *batch.modules()])
    assert not any(isinstance(m, (PackedStack, FoldedStack, FoldedCall)) for m in per_child.modules())
    # The channels form has no reshape between the merged layers: its grouped Conv run as they are.
    assert all(m.packed for m in channels.modules() if type(m).__name__ == "StackedLayer")


def test_streams_with_different_input_channels_merge_after_the_stem():
    kept = _trained(TwoStreams(Trunk(3, channels_in=3), Trunk(3, channels_in=2)))
    shapes = ((3, 16, 16, 16), (2, 16, 16, 16))
    g = torch.Generator().manual_seed(1)
    outcome = merge_branches(kept, tuple(torch.randn(2, *s, generator=g) for s in shapes))
    assert outcome.merged, outcome.reason
    assert outcome.description.startswith(
        "2 × Trunk (streams.0, streams.1): stem kept (4×3×3×3×3 vs 4×2×3×3×3); "
    )
    _agrees_in_float64(kept, outcome.module, shapes)


def test_a_residual_add_across_a_kept_and_a_merged_value_stays_exact():
    class Skip(Trunk):
        def forward(self, x: Tensor) -> Tensor:
            y = self.stem(x)  # per branch
            return self.pool(self.layer1(self.norm(y)) + y).flatten(1)  # merged + kept

    kept = _trained(TwoStreams(Skip(5), Skip(3)))
    outcome = merge_branches(kept, _inputs())
    assert outcome.merged and outcome.partial, outcome.reason
    _agrees_in_float64(kept, outcome.module)


def test_a_weight_the_branch_forward_reads_itself_is_applied_per_branch():
    class Scaled(Trunk):
        def __init__(self, stem: int) -> None:
            super().__init__(stem)
            self.gain = nn.Parameter(torch.rand(4, 1, 1, 1) + 0.5)

        def forward(self, x: Tensor) -> Tensor:
            return self.pool(self.layer1(self.norm(self.stem(x))) * self.gain).flatten(1)

    kept = _trained(TwoStreams(Scaled(5), Scaled(3)))
    outcome = merge_branches(kept, _inputs())
    assert outcome.merged and outcome.groups[0].fold == "channels", outcome.reason
    assert {"streams.0.gain", "streams.1.gain"} <= {n.target for n in outcome.module.graph.nodes}
    _agrees_in_float64(kept, outcome.module)


@pytest.mark.parametrize(
    ("dims", "form"),
    [
        (0, "channels"),  # across the batch: each channel is one branch's, still exact side by side
        (1, "batch"),  # across channels: side by side the branches' channels would mix
        ((0, 1), "per-child"),  # both: only per branch
    ],
)
def test_code_between_merged_children_that_mixes_values_falls_back_to_a_form_that_does_not(dims, form):
    class Centred(Trunk):
        def forward(self, x: Tensor) -> Tensor:
            x = self.layer1(self.norm(self.stem(x)))
            return self.pool(self.layer2(x - x.mean(dim=dims, keepdim=True))).flatten(1)

    kept = _trained(TwoStreams(Centred(5), Centred(3)))
    outcome = merge_branches(kept, _inputs(batch=3))
    assert outcome.merged, outcome.reason
    assert outcome.groups[0].fold == form
    _agrees_in_float64(kept, outcome.module)


def test_the_merged_module_is_an_ordinary_module(tmp_path):
    kept = _stems()
    outcome = merge_branches(kept, _inputs())
    clone = copy.deepcopy(outcome.module)
    assert _max_error(outcome.module, clone, _inputs(seed=5)) == 0.0
    shape = (1, 16, 16, 16)
    assert _conv_count(kept, shape, tmp_path / "kept.onnx") == 8
    assert _conv_count(outcome.module, shape, tmp_path / "merged.onnx") == 2 + 3  # two stems, three grouped


def test_every_kept_layer_maps_to_a_merged_layer_of_its_kind():
    kept = _stems()
    merged = merge_branches(kept, _inputs()).module
    rename, canonical = graph_renamers(merged)
    modules = dict(merged.named_modules())
    for path, module in kept.named_modules():
        if isinstance(module, _LAYERS):
            found = modules[rename(path)]
            inner = getattr(found, "layer", found)  # a stacked layer's grouped Conv or BatchNorm
            assert type(inner) is type(module), path
    assert rename("streams.0.stem") == "streams.0.stem" != rename("streams.1.stem")  # kept: per branch
    assert rename("streams.0.layer2.conv") == rename("streams.1.layer2.conv")  # merged: one layer
    assert canonical(rename("streams.0.layer2.conv") + ".layer") == rename("streams.0.layer2.conv")


def test_whole_branches_alone_when_partial_merging_is_off():
    outcome = merge_branches(_stems(), _inputs(), partial=False)
    assert not outcome.merged
    assert (
        outcome.reason
        == "nothing to merge: branches differ: streams.1.stem.weight is 4×1×3×3×3, streams.0.stem.weight 4×1×5×5×5"
    )


class Three(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        return sum(m(x) for m, x in zip(self.members, (a, b, c)))


@pytest.mark.parametrize(
    ("members", "description"),
    [
        # All three in part remove 2 × 7 layers with weights, the two alike whole 1 × 8: in part.
        (
            [Trunk(3), Trunk(3), Trunk(5)],
            "3 × Trunk (members.0, members.1, members.2): stem kept (4×1×3×3×3 vs",
        ),
        # Here in part only the Linear merges (2 × 1), the two alike whole remove 1 × 9: whole.
        (
            [nn.Sequential(Trunk(3), nn.Linear(4, 4)) for _ in range(2)]
            + [nn.Sequential(Trunk(5), nn.Linear(4, 4))],
            "2 × Sequential (members.0, members.1), 4 Conv each → 4 grouped Conv",
        ),
    ],
)
def test_of_three_branches_two_alike_the_merge_that_removes_more_layers_wins(members, description):
    torch.manual_seed(0)
    kept = _trained(Three(members))
    outcome = merge_branches(kept, _inputs(3))
    assert outcome.description.startswith(description), outcome.description
    _agrees_in_float64(kept, outcome.module, ((1, 16, 16, 16),) * 3)


# --- nothing merges: the reasons ------------------------------------------------------------------


def test_a_stem_with_another_stride_changes_every_later_shape_and_says_so():
    outcome = merge_branches(_trained(TwoStreams(Trunk(3), Trunk(3, stride=2))), _inputs())
    assert not outcome.merged
    assert outcome.reason == (
        "nothing to merge: branches differ: streams.1.stem is Conv3d(1, 4, kernel_size=(3, 3, 3), stride=(2, 2, 2), "
        "padding=(1, 1, 1)), streams.0.stem Conv3d(1, 4, kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1)), "
        "which changes the shapes after it (norm gets 4×16×16×16 in streams.0, 4×8×8×8 in streams.1): nothing merges"
    )


def test_stages_of_one_branch_are_not_reported_as_branches():
    model = _trained(TwoStreams(Trunk(3, width=4), Trunk(3, width=6), width=5))
    model.head = nn.Linear(10, 3)
    outcome = merge_branches(model.eval(), _inputs())
    assert not outcome.merged
    # One line for the one branch group; layer1 -> layer2 -> layer3 inside a trunk are no pair.
    assert outcome.reason == (
        "nothing to merge: branches differ: streams.1.stem.weight is 6×1×3×3×3, streams.0.stem.weight 4×1×3×3×3"
    )


def test_forwards_that_differ_say_where():
    class Optional(Trunk):
        def __init__(self, stem: int, twice: bool) -> None:
            super().__init__(stem)
            self.twice = twice

        def forward(self, x: Tensor) -> Tensor:
            y = super().forward(x)
            return y * 2.0 if self.twice else y  # resolved when traced, like MONAI's no_max_pool

    outcome = merge_branches(_trained(TwoStreams(Optional(3, False), Optional(5, True))), _inputs())
    assert not outcome.merged
    assert (
        outcome.reason
        == "nothing to merge: branches differ: streams.1.forward runs mul where streams.0.forward runs output"
    )


# --- MONAI ----------------------------------------------------------------------------------------


def _small_resnets(sizes=(7, 3), strides=(1, 1)) -> nn.Module:
    from monai.networks.nets import ResNet

    torch.manual_seed(0)
    trunks = [
        ResNet("basic", [1, 1, 1, 1], [4, 8, 8, 8], spatial_dims=3, n_input_channels=1, feed_forward=False,
               conv1_t_size=size, conv1_t_stride=stride)
        for size, stride in zip(sizes, strides)
    ]  # fmt: skip
    return library_models._trained_like(library_models.TwoTrunks(trunks, 8, 3))


RESNETS = (
    "2 × ResNet (trunks.0, trunks.1): conv1 kept (4×1×7×7×7 vs 4×1×3×3×3); "
    "bn1, layer1–layer4 merged: 11 of 12 Conv → 11 grouped Conv"
)


def test_monai_resnet_trunks_with_different_stems_merge_all_but_the_stem(tmp_path):
    kept = _small_resnets()
    outcome = merge_branches(kept, _inputs())
    assert outcome.description == RESNETS
    _agrees_in_float64(kept, outcome.module)
    assert _conv_count(outcome.module, (1, 16, 16, 16), tmp_path / "merged.onnx") == 13


def test_monai_resnet_stems_of_another_stride_merge_nothing_and_say_why():
    outcome = merge_branches(_small_resnets((7, 7), (1, 2)), _inputs())
    assert not outcome.merged
    assert outcome.reason.endswith(
        "which changes the shapes after it (bn1 gets 4×16×16×16 in trunks.0, 4×8×8×8 in trunks.1): nothing merges"
    )


@pytest.mark.slow
def test_partly_merged_monai_trunks_compile():
    kept = _small_resnets()
    outcome = merge_branches(kept, _inputs())
    compiled = torch.compile(copy.deepcopy(outcome.module))
    xs = _inputs(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*xs), kept(*xs), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_library_fixture_merges_eleven_of_twelve_conv_at_full_size(tmp_path):
    kept = library_models.two_resnet10_stems()
    shape = (1, 32, 32, 32)
    outcome = merge_branches(kept, _inputs(shape=shape))
    assert outcome.description == RESNETS.replace("4×1×", "64×1×")
    _agrees_in_float64(kept, outcome.module, (shape, shape))
    assert _conv_count(kept, shape, tmp_path / "kept.onnx") == 24
    assert _conv_count(outcome.module, shape, tmp_path / "merged.onnx") == 13
