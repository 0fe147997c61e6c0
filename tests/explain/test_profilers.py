"""Each runtime's profile read back as units of work: the bookkeeping that could drop or double
count a unit, on real profiles where the runtime is here and on synthetic traces otherwise."""

import pytest
import torch
from torch import nn

from ccnbench.explain.ort_profile import runs_from_trace
from ccnbench.explain.torch_profile import CALL, MODULE_PREFIX, _profile, add_module_ranges, charge
from tests.explain.test_explain_cli import _explain
from tests.helpers import FIXTURES


def test_torch_self_times_add_up_to_each_call_and_land_on_the_innermost_module():
    model = nn.Sequential(nn.Conv3d(1, 4, 3), nn.Sequential(nn.ReLU(), nn.MaxPool3d(2)), nn.Flatten())
    handles = add_module_ranges(model)
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.inference_mode(), _profile() as prof:
        for _ in range(2):
            with torch.profiler.record_function(CALL):
                model(x)
    for handle in handles:
        handle.remove()
    roots = [e for e in prof.events() if e.name == CALL]
    assert len(roots) == 2
    for root in roots:
        times, kernels = charge(root)
        assert sum(times.values()) == pytest.approx(root.cpu_time_total)
        assert {"0", "1.0", "1.1", "2"} <= set(times)
        assert any("conv" in op for op in kernels["0"]) and any("max_pool" in op for op in kernels["1.1"])
        assert not any(op.startswith(MODULE_PREFIX) for ops in kernels.values() for op in ops)


def test_ort_nodes_belong_to_the_run_whose_span_holds_them():
    def node(name, ts):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": 1, "args": {}}

    trace = [
        node("init", 1),  # before any run: the session's initialisation, in no run
        {"cat": "Session", "name": "model_run", "ts": 10, "dur": 10},
        node("a", 11), node("b", 15), {"cat": "Node", "name": "a_fence_before", "ts": 11},
        {"cat": "Session", "name": "model_run", "ts": 30, "dur": 10},
        node("a", 31), node("b", 39),
    ]  # fmt: skip
    runs = runs_from_trace(trace)
    assert [[e["name"] for e in run] for run in runs] == [["a_kernel_time", "b_kernel_time"]] * 2


@pytest.mark.gpu
def test_ort_cuda_is_profiled_and_says_its_times_are_host_times(tmp_path):
    data = _explain(
        ["--preset", "tiny", "--variant", "model", "--layout", "kept", "--targets", "ort:cuda"], tmp_path
    )
    (profile,) = data["profiles"]
    assert profile["events"] and "host" in profile["note"]


@pytest.mark.tensorrt
def test_tensorrt_layers_map_to_modules_through_the_onnx_node_names(tmp_path):
    data = _explain(
        ["--preset", "tiny", "--variant", "model", "--compare", "kept,merged", "--targets", "tensorrt:cuda"],
        tmp_path,
    )
    (table,) = data["tables"]
    assert any("extractors.{0,1,2}" in r["label"] for r in table["rows"])


def test_tensorrt_layer_metadata_names_the_onnx_nodes_it_holds():
    from ccnbench.explain.tensorrt_profile import onnx_layers

    metadata = "[ONNX Layer: node_Conv_88]\x1f[ONNX Layer: node_leaky_relu]"
    assert onnx_layers(metadata) == ["node_Conv_88", "node_leaky_relu"]
    assert onnx_layers("") == []


def test_each_batchnorm_is_paired_with_the_conv_whose_output_it_normalises():
    from ccnbench.explain.onnx_nodes import conv_before_norm

    block = nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.BatchNorm3d(4))
    assert conv_before_norm(block.eval(), [torch.randn(1, 1, 6, 6, 6)]) == {"1": "0"}


@pytest.mark.slow
def test_a_monai_resnet_conv_and_the_batchnorm_the_exporter_folded_into_it_are_one_row(tmp_path):
    model = [
        "--model",
        f"{FIXTURES / 'library_models.py'}:two_resnet10_trunks",
        "--input-shape",
        "1x16x16x16",
    ]
    data = _explain(
        [*model, "--branches", "2", "--layout", "kept", "--targets", "ort:cpu,openvino:cpu"], tmp_path
    )
    (table,) = data["tables"]
    labels = [r["label"] for r in table["rows"]]
    # The stem's Conv, its folded BatchNorm and the ReLU ONNX Runtime fused after them.
    assert "trunks.0.{conv1,bn1,act}" in labels, labels
    assert not any(label.endswith(".conv1") for label in labels)  # never left with no time
