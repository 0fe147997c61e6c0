"""OpenVINO backend: agreement with the oracle, the precision it really ran, and a clean absence."""

import sys

import pytest
import torch

from ccnbench.backends import BuildOptions, Target, backend_of
from ccnbench.backends.openvino import OpenVinoBackend, compile_config
from ccnbench.models import spec_from_preset
from ccnbench.run.case_group import run_group
from ccnbench.run.plan import CaseGroup
from ccnbench.source import ModelSource

pytest.importorskip("openvino")
TARGET = Target("openvino", "cpu")


def _group(variant, layout, artifacts_dir, precision="fp32", batches=(1, 3)):
    source = ModelSource.from_spec(spec_from_preset("tiny", variant), layout)
    options = BuildOptions(precision=precision, batch_sizes=batches, threads=2, artifacts_dir=artifacts_dir)
    return CaseGroup(source, TARGET, precision, batches, options)


@pytest.mark.parametrize("variant", ["decision", "multitask"])
@pytest.mark.parametrize("layout", ["kept", "merged"])
def test_fp32_agrees_with_the_oracle_and_runs_in_f32(variant, layout, artifacts_dir):
    results = list(run_group(_group(variant, layout, artifacts_dir)))
    assert [r.key.batch for r in results] == [1, 3]
    for r in results:
        assert r.status == "ok", r.message
        assert r.agreement.passed and r.agreement.max_abs < 1e-4
        # The precision is read back from the compiled model, not copied from the request.
        assert r.details["inference_precision"] == "fp32"
        assert r.details["threads"] == 2 and r.details["streams"] == 1
        assert r.artifact["file"].endswith(".onnx")


def test_bf16_is_its_own_precision_and_is_recorded(artifacts_dir):
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 path")
    fp32, bf16 = (
        next(run_group(_group("decision", "merged", artifacts_dir, p, (1,)))) for p in ("fp32", "bf16")
    )
    assert bf16.status == "ok" and bf16.details["inference_precision"] == "bf16"
    # bf16 really ran: its error is orders of magnitude above f32's (and within bf16's tolerance).
    assert bf16.agreement.passed and bf16.agreement.max_abs > 10 * fp32.agreement.max_abs
    # Both came from the same fp32 ONNX file: in OpenVINO precision is a runtime choice.
    assert bf16.artifact["file"] == fp32.artifact["file"]


def test_the_config_pins_threads_streams_latency_and_precision():
    config = compile_config(BuildOptions(precision="fp32", threads=3))
    assert config == {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": 3,
        "INFERENCE_PRECISION_HINT": "f32",
    }
    assert compile_config(BuildOptions(precision="bf16"))["INFERENCE_PRECISION_HINT"] == "bf16"


def test_outputs_are_reused_buffers_and_inputs_are_not_copied(artifacts_dir):
    group = _group("feature", "merged", artifacts_dir, batches=(2,))
    with OpenVinoBackend().prepare(group.source, TARGET, group.options) as runner:
        x = group.source.make_inputs(2)
        first = runner.infer(x)
        expected = [t.clone() for t in first]
        second = runner.infer(x)
        assert [t.data_ptr() for t in first] == [t.data_ptr() for t in second]
        # The request reads the caller's tensors in place: changing them changes the next result.
        for t in x:
            t.zero_()
        changed = runner.infer(x)
        assert not torch.equal(changed[0], expected[0])


def test_missing_openvino_is_unavailable_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    reason = backend_of(TARGET).availability("cpu")
    assert reason and "pip install 'ccnbench[openvino]'" in reason
