import sys
from pathlib import Path

import pytest
import torch

from ccnbench.source import ModelSource

FIXTURES = Path(__file__).parent / "fixtures" / "user_models.py"


def test_a_factory_runs_once_per_process_and_callers_get_independent_copies():
    source = ModelSource.from_factory(f"{FIXTURES}:counted", (1, 8, 8, 8))
    fixture = next(
        m for name, m in sys.modules.items() if name.startswith("ccnbench_user_") and hasattr(m, "counted")
    )
    before = fixture.CALLS["counted"]
    a, b = source.module(), source.module_for("kept")
    assert source.output_names == ("output",) and source.flops_per_sample() > 0
    inputs = source.make_inputs(2)
    assert source.oracle(inputs)[0].dtype == torch.float64
    assert fixture.CALLS["counted"] - before == 1
    a.double()  # a backend casting its copy in place must not touch anyone else's
    assert next(b.parameters()).dtype == torch.float32
    torch.testing.assert_close(a(inputs[0].double()).float(), b(inputs[0]), rtol=1e-5, atol=1e-6)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelSource("pickle")
