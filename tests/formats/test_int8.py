"""int8 QDQ files: recipe identity in names and keys, calibration, validation, the runtimes'
own account of what ran in int8, the int8 faults, and the command line."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from ccnbench.backends import int8_layers
from ccnbench.cli import app
from ccnbench.errors import UsageError
from ccnbench.formats.int8 import (
    INT8_PRECISIONS,
    Recipe,
    calibration_inputs,
    expand_alias,
    int8_name,
    recipe_for,
)
from ccnbench.formats.onnx_artifact import META_PREFIX, load_artifact
from ccnbench.formats.onnx_export import export
from ccnbench.models import spec_from_preset
from ccnbench.models.int8_faults import branch_scales, int8_faults, wrong_scale

runner = CliRunner()


@pytest.fixture(scope="module")
def spec():
    return spec_from_preset("tiny", "model", branches=2)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("int8")


@pytest.fixture(scope="module")
def files(spec, out_dir):
    return {
        (lay, p): export(spec, lay, p, out_dir=out_dir) for lay in ("kept", "merged") for p in INT8_PRECISIONS
    }


def test_alias_names_both_activation_types():
    assert expand_alias(["fp32", "int8"]) == ["fp32", "int8-u8", "int8-s8"]
    assert expand_alias(["int8-s8", "int8"]) == ["int8-s8", "int8-u8"]


def test_recipe_key_says_quantizer_method_symmetry_samples_and_seed():
    u8, s8 = Recipe("int8-u8"), Recipe("int8-s8")
    assert u8.key.startswith(f"ort{ort.__version__}/minmax/u8asym/n32/seed0")
    assert "s8sym" in s8.key
    assert Recipe("int8-u8", seed=1).key != u8.key
    assert Recipe("int8-u8", per_channel=False).key != u8.key
    with pytest.raises(UsageError):
        Recipe("fp32")


def test_int8_file_is_qdq_with_its_recipe(files, spec):
    for (layout, precision), a in files.items():
        proto = onnx.load(str(a.path))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert a.precision == precision and a.layout == layout
        assert meta[META_PREFIX + "quantization_key"] == Recipe(precision).key
        assert a.op_histogram["QuantizeLinear"] > 0 and a.op_histogram["DequantizeLinear"] > 0
        assert f"-{precision}-" in a.path.name
        weights = {t.name: t for t in proto.graph.initializer}
        conv_weight = next(t for name, t in weights.items() if name.endswith("conv.weight_quantized"))
        assert conv_weight.data_type == onnx.TensorProto.INT8
        # per-channel: one scale per output channel
        scale = weights[conv_weight.name.replace("_quantized", "_scale")]
        assert list(scale.dims) == [conv_weight.dims[0]]
    names = {a.path.name for a in files.values()}
    assert len(names) == len(files)


def test_symmetric_activations_have_zero_point_zero(files):
    proto = onnx.load(str(files[("kept", "int8-s8")].path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    points = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert points and all(p.dtype == np.int8 and not p.any() for p in points)
    proto = onnx.load(str(files[("kept", "int8-u8")].path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert all(inits[n.input[2]].dtype == np.uint8 for n in proto.graph.node if n.op_type == "QuantizeLinear")


def test_export_reuses_the_file_and_calibration_data_changes_the_name(spec, out_dir, files, tmp_path):
    again = export(spec, "kept", "int8-u8", out_dir=out_dir)
    assert again.reused and again.path == files[("kept", "int8-u8")].path
    data = tmp_path / "calib.npz"
    g = np.random.default_rng(0)
    np.savez(
        data, **{n: g.standard_normal((4, *spec.input_shape)).astype(np.float32) for n in spec.input_names}
    )
    mine = export(spec, "kept", "int8-u8", out_dir=out_dir, calibration=data)
    assert mine.path != again.path
    meta = {p.key: p.value for p in onnx.load(str(mine.path)).metadata_props}
    assert "/n4/data" in meta[META_PREFIX + "quantization_key"]


def test_seeded_calibration_is_not_the_evaluation_or_timed_inputs(spec):
    from ccnbench.measure import int8_grading
    from ccnbench.source import ModelSource

    feeds = calibration_inputs(Recipe("int8-u8", samples=2), spec.input_names, spec.input_shape)
    source = ModelSource.from_spec(spec)
    inputs, _ = int8_grading.evaluation_set(source, samples=2)
    first = torch.from_numpy(feeds[0][spec.input_names[0]])
    assert not torch.equal(first, inputs[0][:1])
    assert not torch.equal(first, source.make_inputs(1)[0])


def test_bad_calibration_files_are_usage_errors(tmp_path, spec):
    with pytest.raises(UsageError, match=r"expected a \.npz"):
        recipe_for("int8-u8", tmp_path / "missing.npz")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{n: np.zeros((2, 1, 3, 3, 3), np.float32) for n in spec.input_names})
    recipe = recipe_for("int8-u8", wrong)
    with pytest.raises(UsageError, match="samples of shape"):
        calibration_inputs(recipe, spec.input_names, spec.input_shape, wrong)


def test_int8_name_keeps_what_and_hashes_the_recipe():
    name = "model-kept-n3-fp32-op18-eb566ca3.onnx"
    u8 = int8_name(name, Recipe("int8-u8"))
    assert u8.startswith("model-kept-n3-int8-u8-op18-") and u8 != int8_name(name, Recipe("int8-u8", seed=2))


def test_runtimes_report_int8_layers(files, out_dir, spec):
    int8 = files[("merged", "int8-u8")]
    layers = int8_layers.ort_layers(ort, int8.path, 1)
    assert layers["ran_int8"] and any(op.startswith("QLinearConv") for op in layers["int8_layers"])
    fp32 = load_artifact(next(out_dir.glob("model-merged-n2-fp32-*.onnx")))
    plain = int8_layers.ort_layers(ort, fp32.path, 1)
    assert not plain["ran_int8"] and plain["float_layers"]
    assert "not an int8 case" in int8_layers.nothing_in_int8(fp32.path.name, "ONNX Runtime", plain)


def test_openvino_reports_int8_convolutions(files):
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(
        str(files[("kept", "int8-s8")].path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    layers = int8_layers.openvino_layers(compiled)
    assert layers["ran_int8"] and layers["int8_layers"].get("Convolution", 0) >= 1 and layers["int8_kernels"]


def test_wrong_scale_edits_one_dequantize(files):
    proto = onnx.load(str(files[("kept", "int8-u8")].path))
    before = sum(1 for t in proto.graph.initializer)
    wrong_scale(proto)
    assert sum(1 for t in proto.graph.initializer) == before + 1
    assert (
        sum(n.input[1].endswith("_wrong") for n in proto.graph.node if n.op_type == "DequantizeLinear") == 1
    )


def test_branch_scales_gives_branch_one_branch_zeros_scales(files):
    proto = onnx.load(str(files[("kept", "int8-u8")].path))
    branch_scales(proto)
    q = {n.input[0]: n.input[1] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert q["input_1"] == q["input_0"]
    assert [f.name for f in int8_faults("merged", 2)] == ["constant_calibration", "wrong_scale", "per_tensor"]
    assert "branch_scales" in [f.name for f in int8_faults("kept", 2)]


def test_cli_export_int8_says_how_it_was_calibrated(tmp_path):
    result = runner.invoke(app, ["export", "--variant", "model", "--preset", "tiny", "--branches", "2",
                                 "--precision", "int8-s8", "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "int8-s8" in result.output and "seeded" in result.output


def test_cli_calibration_needs_int8_and_a_npz(tmp_path):
    result = runner.invoke(app, ["export", "--variant", "model", "--preset", "tiny", "--calibration", "x.npz",
                                 "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "--precision int8" in result.output
    result = runner.invoke(app, ["export", "--variant", "model", "--preset", "tiny", "--precision", "int8",
                                 "--calibration", str(tmp_path / "none.txt"), "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_cli_calibration_is_refused_with_a_users_model(tmp_path):
    data = tmp_path / "c.npz"
    np.savez(data, input=np.zeros((2, 1, 8, 8, 8), np.float32))
    result = runner.invoke(app, ["export", "--model", "json:dumps", "--input-shape", "1x8x8x8", "--precision", "int8",
                                 "--calibration", str(data), "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "seeded inputs" in result.output
