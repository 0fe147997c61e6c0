"""ONNX export: every variant and layout, dynamic batch, fp16, validation, reuse, bad input."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from ccnbench.cli import app
from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.formats import onnx_export as export_module
from ccnbench.formats.onnx_artifact import ExportError, expected_conv_count, load_artifact, validate
from ccnbench.formats.onnx_export import export
from ccnbench.models import VARIANTS, build, spec_from_preset

runner = CliRunner()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


def _inputs(spec, batch, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *spec.input_shape, generator=g) for _ in spec.input_names]


def _run_onnx(path, spec, xs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: x.numpy() for name, x in zip(spec.input_names, xs)})


def _run_torch(spec, layout, xs):
    with torch.no_grad():
        y = build(spec, layout)(*xs)
    return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_and_layout_exports_and_matches_pytorch(variant, artifacts_dir):
    spec = spec_from_preset("tiny", variant, branches=3)
    outputs = {}
    for layout in ("kept", "merged"):
        artifact = export(spec, layout, out_dir=artifacts_dir)  # the session's: test_check runs these files
        assert artifact.conv_count == expected_conv_count(spec, layout)
        assert artifact.input_names == spec.input_names and artifact.output_names == spec.output_names
        assert all(shape[0] == "batch" for shape in artifact.input_shapes)
        onnx.checker.check_model(str(artifact.path), full_check=True)
        for batch in (1, 5):  # one file, two batch sizes: the batch dimension really is dynamic
            xs = _inputs(spec, batch)
            got = _run_onnx(artifact.path, spec, xs)
            want = _run_torch(spec, layout, xs)
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape == (batch, g.shape[1])
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
            outputs[layout, batch] = got
    for batch in (1, 5):  # kept and merged files agree with each other
        for k, m in zip(outputs["kept", batch], outputs["merged", batch], strict=True):
            np.testing.assert_allclose(k, m, rtol=1e-4, atol=1e-5)


def test_shared_input_mode_has_one_input(out_dir):
    spec = spec_from_preset("tiny", "decision", branches=4, input_mode="shared")
    artifact = export(spec, "merged", out_dir=out_dir)
    assert artifact.input_names == ("input",)
    assert artifact.conv_count == spec.depth
    xs = _inputs(spec, 2)
    np.testing.assert_allclose(
        _run_onnx(artifact.path, spec, xs)[0], _run_torch(spec, "kept", xs)[0], rtol=1e-4, atol=1e-5
    )


def test_metadata_says_what_the_file_is(out_dir):
    spec = spec_from_preset("tiny", "multitask", branches=2, seed=5)
    artifact = export(spec, "merged", out_dir=out_dir)
    meta = {p.key: p.value for p in onnx.load(str(artifact.path)).metadata_props}
    assert meta["ccnbench.layout"] == "merged"
    assert meta["ccnbench.precision"] == "fp32"
    assert meta["ccnbench.torch"] == torch.__version__
    again = load_artifact(artifact.path)
    assert again.spec == spec and again.layout == "merged"
    assert again.sha256 == artifact.sha256 and len(again.sha256) == 64


def test_structure_check_rejects_a_graph_that_lies_about_its_layout(out_dir):
    spec = spec_from_preset("tiny", "model", branches=3)
    kept = onnx.load(str(export(spec, "kept", out_dir=out_dir).path))
    validate(kept, spec=spec, layout="kept")
    with pytest.raises(
        ExportError, match="structure check failed: a merged model-n3@tiny graph has 2 Conv nodes"
    ):
        validate(kept, spec=spec, layout="merged")
    merged = onnx.load(str(export(spec, "merged", out_dir=out_dir).path))
    with pytest.raises(ExportError, match="has 6 Conv nodes"):
        validate(merged, spec=spec, layout="kept")


def test_checker_failure_is_an_error(out_dir):
    spec = spec_from_preset("tiny", "early", branches=2)
    proto = onnx.load(str(export(spec, "kept", out_dir=out_dir).path))
    proto.graph.node[0].input[0] = "no_such_tensor"
    with pytest.raises(ExportError, match="validation failed"):
        validate(proto)


@pytest.mark.parametrize("io", ["fp32", "fp16"])
def test_fp16_artifact_has_fp16_weights_and_the_requested_io(io, out_dir):
    spec = spec_from_preset("tiny", "model", branches=2)
    artifact = export(spec, "merged", precision="fp16", io=io, out_dir=out_dir)
    proto = onnx.load(str(artifact.path))
    float_weights = {
        t.data_type for t in proto.graph.initializer if t.data_type in (1, 10) and len(t.dims) > 1
    }
    assert float_weights == {onnx.TensorProto.FLOAT16}
    want = onnx.TensorProto.FLOAT16 if io == "fp16" else onnx.TensorProto.FLOAT
    assert {v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]} == {want}
    assert artifact.precision == "fp16" and artifact.io == io
    fp32 = export(spec, "merged", out_dir=out_dir)
    assert artifact.size_bytes < 0.6 * fp32.size_bytes
    # ONNX Runtime's CPU provider runs these ops in fp16; the result is fp32's to fp16 round-off.
    xs = _inputs(spec, 2)
    feed = [x.half() if io == "fp16" else x for x in xs]
    got = _run_onnx(artifact.path, spec, feed)[0].astype(np.float32)
    np.testing.assert_allclose(got, _run_torch(spec, "kept", xs)[0], rtol=2e-2, atol=2e-2)


def test_reuse_and_force(out_dir):
    spec = spec_from_preset("tiny", "feature", branches=2, seed=11)
    first = export(spec, "kept", out_dir=out_dir)
    assert not first.reused
    inode = os.stat(first.path).st_ino
    second = export(spec, "kept", out_dir=out_dir)
    assert second.reused and second.sha256 == first.sha256 and os.stat(first.path).st_ino == inode
    forced = export(spec, "kept", out_dir=out_dir, force=True)
    assert not forced.reused and os.stat(forced.path).st_ino != inode  # rewritten (renamed into place)
    other_seed = export(spec.with_(seed=12), "kept", out_dir=out_dir)
    assert other_seed.path != first.path


def test_failed_export_keeps_the_existing_file_intact(out_dir, monkeypatch):
    spec = spec_from_preset("tiny", "early", branches=2, seed=21)
    good = export(spec, "kept", out_dir=out_dir)
    before = good.path.read_bytes()

    def broken(*args, **kwargs):
        raise ExportError("torch.onnx.export failed: simulated")

    monkeypatch.setattr(export_module, "_run_exporter", broken)
    with pytest.raises(ExportError):
        export(spec, "kept", out_dir=out_dir, force=True)
    assert good.path.read_bytes() == before
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]


def test_bad_options_are_usage_errors(out_dir):
    spec = spec_from_preset("tiny", "early")
    for kwargs, words in (
        ({"layout": "diagonal"}, "unknown layout"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"opset": 9}, "opset 9 cannot be produced"),
        ({"opset": 999}, "opset 999 cannot be produced"),
        ({"precision": "fp32", "io": "fp16"}, "fp16 I/O needs"),
    ):
        with pytest.raises(UsageError, match=words):
            export(spec, out_dir=out_dir, **kwargs)


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CcnbenchError, match="cannot create output directory"):
        export(spec_from_preset("tiny", "early"), out_dir=blocker / "sub")


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--layout", "diagonal"], 2, "unknown layout 'diagonal'"),
        (["--precision", "fp8"], 2, "unknown precision 'fp8'"),
        (["--opset", "7"], 2, "opset 7 cannot be produced"),
        (["--variant", "late"], 2, "unknown variant 'late'"),
    ],
)
def test_cli_bad_input_is_one_line(args, code, words, tmp_path):
    result = runner.invoke(app, ["export", "--preset", "tiny", "--out", str(tmp_path), *args])
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_unwritable_out_exits_1_and_keeps_existing_files(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    result = runner.invoke(
        app, ["export", "--preset", "tiny", "--variant", "early", "--out", str(blocker / "x")]
    )
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: cannot create output directory")
    assert blocker.read_text() == "keep me"


def test_cli_json_lists_what_was_written(tmp_path):
    args = ["export", "--preset", "tiny", "--variant", "model,decision", "--layout", "all", "--branches", "2"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.stdout)
    assert [(r["spec"]["variant"], r["layout"], r["conv_count"]) for r in rows] == [
        ("model", "kept", 4),
        ("model", "merged", 2),
        ("decision", "kept", 4),
        ("decision", "merged", 2),
    ]
    assert all((tmp_path / r["file"]).is_file() for r in rows)
    again = runner.invoke(app, [*args, "--out", str(tmp_path), "--json"])
    assert all(r["reused"] for r in json.loads(again.stdout))


def test_engine_request_without_tensorrt_is_one_clear_line_and_writes_nothing(tmp_path):
    from ccnbench.backends.tensorrt import TensorRTBackend

    reason = TensorRTBackend().availability("cuda")
    if reason is None:
        pytest.skip("TensorRT and CUDA are present: tests/backends/test_tensorrt.py builds real engines")
    result = runner.invoke(
        app, ["export", "--preset", "tiny", "--variant", "early", "--engine", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"error: --engine: {reason}"
    assert list(tmp_path.iterdir()) == []
