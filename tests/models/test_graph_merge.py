"""The general graph merge: real library trunks and small models of our own, merged or kept with a reason."""

from __future__ import annotations

import copy
import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ccnbench.formats.onnx_export import export_module
from ccnbench.models import build_kept, merge, spec_from_preset
from ccnbench.models.graph_merge import MergeOutcome, merge_branches
from ccnbench.models.spec import SHARED_INPUT_VARIANTS, VARIANTS

from helpers import FIXTURES

pytest.importorskip("monai")

_FIXTURE = FIXTURES / "library_models.py"
_spec = importlib.util.spec_from_file_location("library_models", _FIXTURE)
library_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(library_models)


def _inputs(n: int, shape=(1, 16, 16, 16), batch: int = 1, dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, *shape, generator=g).to(dtype) for _ in range(n))


def _flat(y):
    return list(y) if isinstance(y, (tuple, list)) else [y]


def _max_error(a: nn.Module, b: nn.Module, xs) -> float:
    with torch.no_grad():
        ya, yb = _flat(a(*xs)), _flat(b(*xs))
    assert len(ya) == len(yb)
    for p, q in zip(ya, yb):
        assert p.shape == q.shape
        assert p.abs().max() > 1e-6  # a real signal, not zeros that match trivially
    return max(float((p - q).abs().max()) for p, q in zip(ya, yb))


def _assert_float64_agreement(
    kept: nn.Module, outcome: MergeOutcome, n: int, shape=(1, 16, 16, 16), batches=(1, 3)
) -> None:
    """The merged module, cast as the oracle path casts it, equals the kept module in float64."""
    merged64 = copy.deepcopy(outcome.module).double()
    kept64 = copy.deepcopy(kept).double()
    for batch in batches:
        assert _max_error(kept64, merged64, _inputs(n, shape, batch, torch.float64, seed=7)) <= 1e-10


def _conv_count(module: nn.Module, n: int, shape, path: Path) -> int:
    names = [f"input_{i}" for i in range(n)]
    artifact = export_module(copy.deepcopy(module), names, shape, path, ["logits"], force=True)
    _assert_ort_agrees(artifact.path, module, n, shape)
    return artifact.conv_count


def _assert_ort_agrees(path: Path, module: nn.Module, n: int, shape) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch stays dynamic in the merged export
        xs = _inputs(n, shape, batch, seed=3)
        got = session.run(None, {f"input_{i}": x.numpy() for i, x in enumerate(xs)})
        with torch.no_grad():
            want = _flat(module(*xs))
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-4, atol=1e-5)


# --- small models of our own -------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm3d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.norm(self.conv(x)))


def trunk(width: int = 4, stride: int = 1) -> nn.Sequential:
    """Conv, a residual block, pooling to a vector: (B, 1, D, H, W) -> (B, width)."""
    return nn.Sequential(
        nn.Conv3d(1, width, 3, stride=stride, padding=1),
        nn.BatchNorm3d(width),
        nn.ReLU(),
        Residual(width),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
    )


class Concatenated(nn.Module):
    """Separate trunks (attributes, not a list), features concatenated, one Linear."""

    def __init__(self, widths=(4, 4), strides=(1, 1)) -> None:
        super().__init__()
        self.trunk_0 = trunk(widths[0], strides[0])
        self.trunk_1 = trunk(widths[1], strides[1])
        self.head = nn.Linear(sum(widths), 3)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.head(torch.cat([self.trunk_0(x), self.trunk_1(y)], dim=1))


class SharedTrunk(nn.Module):
    """One trunk applied to three views (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = trunk(4)
        self.head = nn.Linear(12, 3)

    def forward(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        return self.head(torch.cat([self.trunk(a), self.trunk(b), self.trunk(c)], dim=1))


class WeightedDecision(nn.Module):
    """Complete models (trunk + classifier), logits combined by fixed weights."""

    def __init__(self, branches: int = 3) -> None:
        super().__init__()
        self.members = nn.ModuleList(nn.Sequential(trunk(4), nn.Linear(4, 5)) for _ in range(branches))
        self.register_buffer("weights", torch.tensor([0.5, 0.3, 0.2][:branches]))

    def forward(self, *views: Tensor) -> Tensor:
        return sum(w * member(x) for w, member, x in zip(self.weights, self.members, views))


class Interleaved(nn.Module):
    """Uses the first branch's output before the second branch's input exists."""

    def __init__(self) -> None:
        super().__init__()
        self.trunks = nn.ModuleList([trunk(4), trunk(4)])

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        a = self.trunks[0](x)
        scale = a.sum(dim=1, keepdim=True)
        b = self.trunks[1](y * 2.0)
        return torch.cat([a * scale, b], dim=1)


class Chained(nn.Module):
    """The same block twice in a row: a chain, not parallel branches."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(1, 4, 3, padding=1)
        self.block = Residual(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(self.block(self.stem(x))).mean(dim=(2, 3, 4))


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace this forward."""

    def __init__(self) -> None:
        super().__init__()
        self.trunks = nn.ModuleList([trunk(4), trunk(4)])

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.mean() > 0:
            return self.trunks[0](x) + self.trunks[1](y)
        return self.trunks[0](x) - self.trunks[1](y)


class Wrapper(nn.Module):
    """The branches live one level down, inside a submodule the forward calls once."""

    def __init__(self) -> None:
        super().__init__()
        self.fusion = Concatenated()
        self.scale = nn.Linear(3, 3)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.scale(self.fusion(x, y))


def _trained(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return library_models._trained_like(model)


# --- merged: the two rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "n", "description"),
    [
        (Concatenated, 2, "2 × Sequential (trunk_0, trunk_1), 2 Conv each → 2 grouped Conv"),
        (SharedTrunk, 3, "3 calls of Sequential (trunk, shared weights) → 2 Conv run once on a 3× batch"),
        (
            WeightedDecision,
            3,
            "3 × Sequential (members.0, members.1, members.2), 2 Conv each → 2 grouped Conv",
        ),
        (Interleaved, 2, "2 × Sequential (trunks.0, trunks.1), 2 Conv each → 2 grouped Conv"),
        (Wrapper, 2, "2 × Sequential (fusion.trunk_0, fusion.trunk_1), 2 Conv each → 2 grouped Conv"),
    ],
)
def test_small_models_merge_and_agree_in_float64(factory, n, description):
    kept = _trained(factory())
    outcome = merge_branches(kept, _inputs(n))
    assert outcome.merged, outcome.reason
    assert outcome.description == description
    assert isinstance(outcome.module, nn.Module) and outcome.module is not kept
    _assert_float64_agreement(kept, outcome, n)


def test_merged_modules_share_no_tensors_with_the_input():
    kept = _trained(Concatenated())
    outcome = merge_branches(kept, _inputs(2))
    before = {k: v.clone() for k, v in kept.state_dict().items()}
    outcome.module.double()
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k]) for k, v in kept.state_dict().items())


def test_rewrites_only_the_branch_calls():
    outcome = merge_branches(_trained(Concatenated()), _inputs(2))
    code = outcome.module.code
    assert "torch.cat" in code and "self.head" in code  # the user's glue and head stay as written
    assert "trunk_0(" not in code and "trunk_1(" not in code
    called = {n.target for n in outcome.module.graph.nodes if n.op == "call_module"}
    assert called == {"head", "trunk_stacked"} or called == {"head", "branches_stacked"}


def test_export_has_one_grouped_conv_per_layer_and_ort_agrees(tmp_path):
    kept = _trained(Concatenated())
    outcome = merge_branches(kept, _inputs(2))
    shape = (1, 16, 16, 16)
    assert _conv_count(kept, 2, shape, tmp_path / "kept.onnx") == 4
    assert _conv_count(outcome.module, 2, shape, tmp_path / "merged.onnx") == 2


def test_merged_module_survives_deepcopy():
    outcome = merge_branches(_trained(WeightedDecision()), _inputs(3))
    clone = copy.deepcopy(outcome.module)
    assert _max_error(outcome.module, clone, _inputs(3, seed=5)) == 0.0


# --- kept, with the reason ---------------------------------------------------------------------------


def test_branches_that_differ_stay_kept_with_the_reason():
    kept = _trained(Concatenated(widths=(16, 24)))
    outcome = merge_branches(kept, _inputs(2))
    assert not outcome.merged
    assert outcome.reason == (
        "nothing to merge: branches differ: trunk_1.0.weight is 24×1×3×3×3, trunk_0.0.weight 16×1×3×3×3"
    )
    assert outcome.to_dict() == {"merged": False, "description": "", "groups": [], "reason": outcome.reason}
    assert _max_error(kept, outcome.module, _inputs(2)) == 0.0  # runs kept


def test_branches_that_differ_only_in_stride_stay_kept():
    outcome = merge_branches(_trained(Concatenated(strides=(1, 2))), _inputs(2))
    assert not outcome.merged
    assert "trunk_1.0 is Conv3d(1, 4, kernel_size=(3, 3, 3), stride=(2, 2, 2)" in outcome.reason


def test_untraceable_model_runs_kept_with_a_clear_reason():
    kept = _trained(DataDependent())
    outcome = merge_branches(kept, _inputs(2))
    assert not outcome.merged
    assert outcome.reason.startswith("cannot trace DataDependent.forward with torch.fx: TraceError:")
    assert _max_error(kept, outcome.module, _inputs(2)) == 0.0


def test_a_chain_of_one_block_is_not_merged():
    outcome = merge_branches(_trained(Chained()), _inputs(1))
    assert not outcome.merged
    assert outcome.reason == "nothing to merge: no parallel branches found"


def test_training_mode_stays_kept():
    outcome = merge_branches(_trained(Concatenated()).train(), _inputs(2))
    assert not outcome.merged
    assert "trunk_0, trunk_1 are in training mode" in outcome.reason


def test_a_layer_without_a_stacked_form_stays_kept():
    model = Concatenated()
    model.trunk_0[1] = nn.GroupNorm(2, 4)
    model.trunk_1[1] = nn.GroupNorm(2, 4)
    outcome = merge_branches(_trained(model), _inputs(2))
    assert not outcome.merged
    assert "trunk_0, trunk_1 stayed kept: 1 is a GroupNorm with weights" in outcome.reason


def test_a_wrong_rewrite_is_caught_by_the_check():
    class MixesTheBatch(nn.Module):  # not per-sample: folding branches into the batch changes it
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x) - self.conv(x).mean(dim=0, keepdim=True)

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = MixesTheBatch(), MixesTheBatch()

        def forward(self, x: Tensor, y: Tensor) -> Tensor:
            return torch.cat([self.a(x), self.b(y)], dim=1)

    outcome = merge_branches(_trained(Two()), _inputs(2, batch=2))
    assert not outcome.merged
    assert "a, b stayed kept: the merged call differs from the module by" in outcome.reason


# --- MONAI trunks ------------------------------------------------------------------------------------


def _small_resnets() -> nn.Module:
    torch.manual_seed(0)
    trunks = [library_models.resnet10_trunk((4, 8, 8, 8)) for _ in range(2)]
    return library_models._trained_like(library_models.TwoTrunks(trunks, 8, 3))


def _small_densenets() -> nn.Module:
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    members = [
        DenseNet(3, 1, 3, init_features=4, growth_rate=4, block_config=(2, 2), bn_size=2) for _ in range(2)
    ]
    return library_models._trained_like(library_models.AveragedModels(members, [2.0, 1.0]))


@pytest.mark.parametrize(
    ("factory", "description", "convs"),
    [
        pytest.param(  # 14 s: with the slow tests (make test merges our own models' branches)
            _small_resnets,
            "2 × ResNet (trunks.0, trunks.1), 12 Conv each → 12 grouped Conv",
            12,
            marks=pytest.mark.slow,
        ),
        pytest.param(  # the same pass and checks as the ResNets, on another library's graph: slow
            _small_densenets,
            "2 × DenseNet (members.0, members.1), 10 Conv each → 10 grouped Conv",
            10,
            marks=pytest.mark.slow,
        ),
    ],
)
def test_monai_trunks_merge_agree_and_export_grouped(factory, description, convs, tmp_path):
    kept = factory()
    outcome = merge_branches(kept, _inputs(2))
    assert outcome.merged, outcome.reason
    assert outcome.description == description
    _assert_float64_agreement(kept, outcome, 2)
    shape = (1, 16, 16, 16)
    assert _conv_count(kept, 2, shape, tmp_path / "kept.onnx") == 2 * convs
    assert _conv_count(outcome.module, 2, shape, tmp_path / "merged.onnx") == convs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("factory", "description", "convs"),
    [
        ("two_resnet10_trunks", "2 × ResNet (trunks.0, trunks.1), 12 Conv each → 12 grouped Conv", 12),
        (
            "two_densenet_members",
            "2 × DenseNet121 (members.0, members.1), 120 Conv each → 120 grouped Conv",
            120,
        ),
    ],
)
def test_library_fixtures_merge_at_full_size(factory, description, convs, tmp_path):
    kept = getattr(library_models, factory)()
    shape = (1, 32, 32, 32)
    outcome = merge_branches(kept, _inputs(2, shape))
    assert outcome.merged and outcome.description == description
    if factory == "two_densenet_members":
        # Two full DenseNet-121 in float64 plus a 240-Conv export take two minutes on 2 cores; the
        # half-size DenseNets above check agreement and the exported Conv count the same way.
        return
    _assert_float64_agreement(kept, outcome, 2, shape, batches=(1,))
    assert _conv_count(outcome.module, 2, shape, tmp_path / "merged.onnx") == convs


@pytest.mark.slow
def test_merged_module_compiles():
    kept = _small_resnets()
    outcome = merge_branches(kept, _inputs(2))
    compiled = torch.compile(copy.deepcopy(outcome.module))
    xs = _inputs(2, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*xs), kept(*xs), rtol=1e-4, atol=1e-5)


# --- cross-check: ccnbench's own variants, general pass vs hand-written merge ----------------------------

VARIANT_CASES = [
    (variant, mode, n)
    for variant, mode, n in itertools.product(VARIANTS, ("separate", "shared"), (2, 3))
    if mode == "separate" or variant in SHARED_INPUT_VARIANTS
]


@pytest.mark.parametrize(("variant", "mode", "n"), VARIANT_CASES)
def test_general_pass_equals_the_hand_written_merge(variant, mode, n):
    spec = spec_from_preset("tiny", variant, branches=n, input_mode=mode)
    kept = build_kept(spec).double()
    xs = _inputs(spec.num_inputs, spec.input_shape, dtype=torch.float64)
    outcome = merge_branches(kept, xs)
    # Early fusion has one extractor over stacked channels: no parallel branches to merge.
    assert outcome.merged == (variant != "early"), outcome.reason
    for batch in (1, 4):
        xb = _inputs(spec.num_inputs, spec.input_shape, batch, torch.float64, seed=9)
        assert _max_error(merge(kept), outcome.module, xb) <= 1e-10
        assert _max_error(kept, outcome.module, xb) <= 1e-10


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "mode"), [(v, m) for v, m, n in VARIANT_CASES if n == 3])
def test_general_pass_exports_as_many_convs_as_the_hand_written_merge(variant, mode, tmp_path):
    spec = spec_from_preset("tiny", variant, branches=3, input_mode=mode)
    kept = build_kept(spec)
    outcome = merge_branches(kept, _inputs(spec.num_inputs, spec.input_shape))
    names = list(spec.input_names)
    general = export_module(
        outcome.module, names, spec.input_shape, tmp_path / "g.onnx", list(spec.output_names)
    )
    hand = export_module(merge(kept), names, spec.input_shape, tmp_path / "h.onnx", list(spec.output_names))
    assert general.conv_count == hand.conv_count == spec.depth


def test_the_reason_names_differing_branches_one_level_down():
    model = Wrapper()
    model.fusion = Concatenated(widths=(16, 24))
    outcome = merge_branches(_trained(model), _inputs(2))
    assert not outcome.merged
    assert outcome.reason == (
        "nothing to merge: in fusion: branches differ: trunk_1.0.weight is 24×1×3×3×3, trunk_0.0.weight 16×1×3×3×3"
    )
