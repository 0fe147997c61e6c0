import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ccnbench.models import build_kept, flops_per_sample, merge, spec_from_preset
from ccnbench.models.spec import SHARED_INPUT_VARIANTS, VARIANTS


@pytest.mark.parametrize(
    ("variant", "mode"), [(v, "separate") for v in VARIANTS] + [(v, "shared") for v in SHARED_INPUT_VARIANTS]
)
def test_analytic_flops_match_pytorch_counter(variant, mode):
    spec = spec_from_preset("tiny", variant, branches=3, input_mode=mode, volume=(12, 13, 14))
    kept = build_kept(spec)
    batch = 2
    xs = [torch.randn(batch, *spec.input_shape) for _ in range(spec.num_inputs)]
    for module in (kept, merge(kept)):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(*xs)
        assert counter.get_total_flops() == batch * flops_per_sample(spec)
