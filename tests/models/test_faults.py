"""Export bugs that really happen fail the check; correct fp16 passes it (tiny models, batch 4 as
in results/fp16-evidence/)."""

import pytest
import torch

from ccnbench.backends import parse_targets
from ccnbench.measure.agreement import DEFAULT_TOLERANCES, TolerancePolicy, compare, equal_tolerance
from ccnbench.models import build_kept, variant_specs
from ccnbench.models.cast import CastIO
from ccnbench.models.faults import fault_names, inject
from ccnbench.run import check, plan
from ccnbench.source import ModelSource

BATCH = 4
SPECS = variant_specs("tiny")


def _outputs(module, inputs, precision):
    if precision == "fp16":  # converts ``module`` itself: call it last
        module = CastIO(module.half(), torch.float16)
    with torch.inference_mode():
        y = module(*inputs)
    return y if isinstance(y, tuple) else (y,)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_every_export_bug_fails_the_check_in_fp32_and_fp16(spec):
    source = ModelSource.from_spec(spec)
    inputs = source.make_inputs(BATCH, 0)
    expected = source.oracle(inputs)
    kept = build_kept(spec)
    names = fault_names(kept)
    assert {"swap_branches", "copy_branch", "bn_reset"} <= set(names) and len(names) > 4
    for fault in names:
        broken = inject(kept, fault)
        fp32 = _outputs(broken, inputs, "fp32")
        if max(equal_tolerance(y, r) for y, r in zip(fp32, expected)) < 1e-5:
            # Only swapping two members that see one shared input with equal weights changes nothing.
            assert (spec.variant, spec.input_mode, fault) == ("decision", "shared", "swap_branches")
            continue
        for precision in ("fp32", "fp16"):
            outputs = fp32 if precision == "fp32" else _outputs(broken, inputs, "fp16")
            agreement = compare(outputs, expected, source.output_names, TolerancePolicy(precision))
            assert not agreement.passed, f"{fault} passed in {precision}: {agreement.to_dict()}"


def test_faults_leave_the_original_alone_and_reject_unknown_names():
    spec = SPECS[2]  # model fusion
    kept = build_kept(spec)
    before = {k: v.clone() for k, v in kept.state_dict().items()}
    inject(kept, "swap_branches")
    inject(kept, "bn_reset")
    assert all(torch.equal(before[k], v) for k, v in kept.state_dict().items())
    with pytest.raises(ValueError, match="unknown fault"):
        inject(kept, "scale_layer:nope")


@pytest.mark.slow  # ten fp16 float64-oracle checks; test_check keeps one fp16 case in make test
def test_correct_fp16_passes_on_every_variant_and_layout(tmp_path):
    sources = [ModelSource.from_spec(s, layout) for s in SPECS for layout in ("kept", "merged")]
    results = check.run(plan.case_groups(sources, parse_targets("torch:cpu"), ["fp16"], [BATCH], tmp_path))
    assert len(results) == 2 * len(SPECS)
    for r in results:
        assert r.passed, f"{r.key}: {r.agreement.to_dict()}"
        # Headroom: correct fp16 stays well inside the tolerance the bugs are measured against.
        assert r.agreement.max_abs < DEFAULT_TOLERANCES["fp16"].atol
