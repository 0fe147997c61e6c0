"""The CUDA targets assert the same agreement as the CPU ones, wherever a GPU exists."""

import pytest

from ccnbench.backends import backend_of, parse_targets
from ccnbench.models import VARIANTS, spec_from_preset
from ccnbench.run import check, plan
from ccnbench.source import ModelSource

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_targets_agree_with_the_oracle(variant, precision, artifacts_dir):
    spec = spec_from_preset("tiny", variant, branches=3)
    sources = [ModelSource.from_spec(spec, layout) for layout in ("kept", "merged")]
    targets = [
        t
        for t in parse_targets("torch:cuda,compile:cuda,compile-graphs:cuda,ort:cuda")
        if not backend_of(t).availability(t.device)
    ]
    results = check.run(plan.case_groups(sources, targets, [precision], [1, 4], artifacts_dir))
    assert results
    for r in results:
        assert r.status == "ok", f"{r.key}: {r.message}"
        assert r.passed, f"{r.key}: {r.agreement.to_dict()}"
