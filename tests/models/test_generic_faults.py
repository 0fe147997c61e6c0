"""The export bugs of ``ccnbench.models.faults`` on a user's own module (``--model``): a branch is
an entry of its ModuleList, any convolution or Linear can be scaled. On MONAI's untrained
EfficientNet-B0 pair (logits about 1e-14) every fault fails under the scale-relative grading, in
fp32 and in fp16, and a correct fp32 run passes (issue 41)."""

import importlib.util

import pytest
import torch
from torch import nn

from ccnbench.measure.agreement import TolerancePolicy, compare
from ccnbench.models.cast import CastIO
from ccnbench.models.faults import branch_list, fault_names, inject
from ccnbench.results import CaseKey, CaseResult

from helpers import FIXTURES


class _Trunks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunks = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten()
            )
            for _ in range(2)
        )
        self.head = nn.Linear(8, 3)

    def forward(self, a, b):
        return self.head(torch.cat([t(x) for t, x in zip(self.trunks, (a, b))], dim=1))


def _inputs(shape=(2, 1, 8, 8, 8)):
    return tuple(torch.randn(*shape, generator=torch.Generator().manual_seed(i)) for i in range(2))


def _verdict(outputs, expected, precision):
    agreement = compare([outputs], [expected], ["logits"], TolerancePolicy(precision))
    return CaseResult(CaseKey("m", "", "kept", "torch:cpu", precision, 2), "ok", agreement=agreement).verdict


def test_a_users_module_gets_the_branch_and_layer_faults():
    torch.manual_seed(0)
    model = _Trunks().eval()
    assert branch_list(model) is model.trunks
    names = fault_names(model)
    assert names[:3] == ["swap_branches", "copy_branch", "bn_reset"]
    assert "scale_layer:trunks.0.0" in names and "scale_layer:head" in names
    inputs = _inputs()
    with torch.no_grad():
        expected = model.double()(*(x.double() for x in inputs))
        model.float()
        for fault in names:
            if fault == "bn_reset":  # an untrained BatchNorm is already mean 0, variance 1
                continue
            assert _verdict(inject(model, fault)(*inputs), expected, "fp32") == "FAIL", fault
        assert _verdict(model(*inputs), expected, "fp32") == "pass"


def test_a_module_without_two_alike_branches_has_no_branch_faults():
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Conv3d(2, 4, 3))
    assert branch_list(model) is None
    assert fault_names(model) == ["bn_reset", "scale_layer:0", "scale_layer:1"]
    with pytest.raises(ValueError, match="unknown fault"):
        inject(model, "swap_branches")


def _library_models():
    pytest.importorskip("monai")
    spec = importlib.util.spec_from_file_location("library_models", FIXTURES / "library_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 40 forward passes of two 3D EfficientNet-B0s (32^3), fp64, fp32 and fp16
def test_untrained_efficientnet_pair_correct_passes_and_every_fault_fails_in_fp32_and_fp16():
    model = _library_models().two_efficientnet_b0()
    inputs = _inputs((2, 1, 32, 32, 32))
    with torch.inference_mode():
        expected = model.double()(*(x.double() for x in inputs))
        model.float()
        assert float(expected.abs().max()) < 1e-12  # the network: logits far below any atol
        assert _verdict(model(*inputs), expected, "fp32") == "pass"
        # fp16 flushes the logits to zero: constant where the reference varies.
        underflow = CastIO(model.half(), torch.float16)(*(x.half() for x in inputs))
        assert bool((underflow == 0).all()) and _verdict(underflow, expected, "fp16") == "FAIL"
        model.float()
        layers = [n for n in fault_names(model) if n.startswith("scale_layer:")]
        faults = ["swap_branches", "copy_branch", layers[0], layers[len(layers) // 2], layers[-1]]
        for fault in faults:
            broken = inject(model, fault)
            assert _verdict(broken(*inputs), expected, "fp32") == "FAIL", fault
            half = CastIO(broken.half(), torch.float16)(*(x.half() for x in inputs))
            assert _verdict(half, expected, "fp16") == "FAIL", fault
