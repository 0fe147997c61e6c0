"""`ccnbench explain` end to end on the tiny preset with the real runtimes (no timing thresholds):
which rows a built-in variant and a user's module get, kept against merged through the merge's
correspondence, and that every profiled unit lands in exactly one row."""

import json

import pytest
from typer.testing import CliRunner

from ccnbench.cli import app
from ccnbench.explain.records import OUTSIDE
from tests.helpers import FIXTURES

runner = CliRunner()
QUICK = ["--rounds", "1", "--calls", "3", "--threads", "1"]
TWO_VIEW = [
    "--model",
    f"{FIXTURES / 'user_models.py'}:two_view",
    "--input-shape",
    "1x10x10x10",
    "--branches",
    "2",
]


def _explain(args, tmp_path):
    result = runner.invoke(app, ["explain", *args, *QUICK, "--artifacts", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _each_unit_once(data):
    """Every profiled unit of every column is in exactly one row, none dropped or counted twice."""
    profiles = {(p["target"], p["layout"], p["batch"]): p for p in data["profiles"]}
    for table in data["tables"]:
        for i, column in enumerate(table["columns"]):
            target, layout = column.split()
            events = profiles[(target, layout, 1)]["events"]
            cells = [r["cells"][i] for r in table["rows"] if r["cells"][i]]
            assert sum(c["units"] for c in cells) == len(events)
            assert sum(c["us"] for c in cells) == pytest.approx(sum(e["us"] for e in events))


def test_model_fusion_kept_against_merged_on_every_cpu_profiler(tmp_path):
    data = _explain(["--preset", "tiny", "--variant", "model", "--compare", "kept,merged"], tmp_path)
    assert {p["target"] for p in data["profiles"]} == {"torch:cpu", "ort:cpu", "openvino:cpu"}
    assert len(data["tables"]) == 3
    _each_unit_once(data)
    for table in data["tables"]:
        labels = {r["label"] for r in table["rows"]}
        # The three branches' first Conv are one row against the merged grouped Conv.
        assert "extractors.{0,1,2}.0.conv → extractor.0.conv" in labels, labels
        assert "classifier → head" in labels
        assert OUTSIDE in labels
    openvino = next(t for t in data["tables"] if "openvino" in t["title"])
    # OpenVINO runs BatchNorm and LeakyReLU as one layer: one row, never split.
    fused = [r for r in openvino["rows"] if r["cells"][0] and r["cells"][0]["fused"]]
    assert any(".{norm,act}" in r["label"] for r in fused)


def test_a_users_module_kept_against_merged_and_two_targets_on_one_layout(tmp_path):
    data = _explain([*TWO_VIEW, "--targets", "torch:cpu,ort:cpu", "--compare", "kept,merged"], tmp_path)
    _each_unit_once(data)
    torch_table, ort_table = data["tables"]
    labels = {r["label"] for r in torch_table["rows"]}
    assert "{a,b}.0 → branches_stacked.branch.0" in labels and "head" in labels
    # ONNX Runtime fuses each Conv with its ReLU (kept and merged): one row for both modules.
    fused = [r for r in ort_table["rows"] if r["cells"][0] and r["cells"][0]["fused"]]
    assert [r["label"] for r in fused] == ["{a,b}.{0,1} → branches_stacked.branch.{0,1}"]
    data = _explain(["--preset", "tiny", "--variant", "decision", "--layout", "merged",
                     "--compare", "ort:cpu,openvino:cpu"], tmp_path)  # fmt: skip
    (table,) = data["tables"]
    assert table["columns"] == ["ort:cpu merged", "openvino:cpu merged"]
    assert {"extractor.0.conv", "head"} <= {r["label"] for r in table["rows"]}
    _each_unit_once(data)


def test_profiled_and_unprofiled_fastest_calls_and_raw_traces(tmp_path):
    traces = tmp_path / "traces"
    out = tmp_path / "out" / "explain.json"
    args = [
        "--preset",
        "tiny",
        "--variant",
        "early",
        "--batch",
        "1,2",
        "--trace",
        str(traces),
        "--out",
        str(out),
    ]
    data = _explain(args, tmp_path)
    assert json.loads(out.read_text())["tables"] == data["tables"]  # the file holds what was printed
    for p in data["profiles"]:
        assert p["overhead"]["fastest_us"] > 0 and p["overhead"]["fastest_profiled_us"] > 0
        assert p["trace"] and (traces / p["trace"].rpartition("/")[2]).is_file()
    # Kept and merged (every layout unless --layout says), each at both batch sizes: a runtime
    # whose profile ends once per session (ONNX Runtime) gets a profiling runner per batch.
    assert len(data["profiles"]) == 12 and not data["skipped"]
    names = {f.name.rpartition(".")[0].rpartition(".")[2] for f in traces.iterdir()}
    assert names == {"openvino", "ort", "torch"} and len(list(traces.iterdir())) == 12
    # ONNX Runtime and PyTorch write Chrome traces other tools can open.
    for f in traces.glob("*.ort.json"):
        assert any(e.get("cat") == "Node" for e in json.loads(f.read_text()))
    for f in traces.glob("*.torch.json"):
        assert "traceEvents" in json.loads(f.read_text())


def _plain_onnx(path):
    """A Conv and a ReLU made with onnx's own API (no exporter metadata), batch dynamic."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((2, 1, 3, 3, 3), 0.1, dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 6, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 4, 4, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))


def test_an_onnx_file_without_exporter_metadata_maps_nodes_by_name(tmp_path):
    path = tmp_path / "plain.onnx"
    _plain_onnx(path)
    data = _explain(["--onnx", str(path), "--targets", "ort:cpu,openvino:cpu"], tmp_path)
    for profile in data["profiles"]:
        assert "rows are ONNX node names" in profile["note"]
        modules = {m for e in profile["events"] for m in e["modules"]}
        assert modules <= {"conv", "relu"} and "conv" in modules


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compare", "kept,merged,kept"], "--compare takes exactly two"),
        (["--compare", "kept,ort:cpu"], "not one of each"),
        (["--compare", "kept,merged", "--layout", "kept"], "both choose the layouts"),
        (["--rounds", "0"], "--rounds and --calls must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(args, message):
    result = runner.invoke(app, ["explain", "--preset", "tiny", *args])
    assert result.exit_code in (1, 2)
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_compiled_targets_say_their_layers_are_not_attributable_and_keep_their_total(tmp_path):
    data = _explain(
        ["--preset", "tiny", "--variant", "early", "--layout", "kept", "--targets", "compile:cpu"], tmp_path
    )
    (profile,) = data["profiles"]
    assert profile["note"].startswith("not attributable") and profile["events"] == []
    assert profile["overhead"]["fastest_us"] > 0 and profile["overhead"]["fastest_profiled_us"] is None
