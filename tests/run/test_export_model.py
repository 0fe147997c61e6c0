"""`ccnbench export --model`: a user's module written kept and merged, each file graded in float64."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ccnbench.cli import app
from ccnbench.formats.onnx_artifact import load_artifact
from ccnbench.source import ModelSource

from helpers import FIXTURES

runner = CliRunner()
USER_MODELS = FIXTURES / "user_models.py"
TWO_VIEW = ["--model", f"{USER_MODELS}:two_view", "--input-shape", "1x10x10x10", "--branches", "2"]


def test_a_users_model_exports_kept_and_merged_each_file_checked_against_the_kept_module(tmp_path):
    result = runner.invoke(app, ["export", *TWO_VIEW, "--layout", "all", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = [
        [cell.strip() for cell in line.split("│")] for line in result.stdout.splitlines() if ".onnx" in line
    ]
    # file, layout, size, Conv, seconds, max abs (against the float64 kept module), verdict
    assert [(r[2], r[4], r[7]) for r in rows] == [("kept", "2", "pass"), ("merged", "1", "pass")]
    for row in rows:
        written = load_artifact(tmp_path / row[1])
        assert written.layout == row[2] and written.conv_count == int(row[4])  # stamped in the file itself
        assert float(row[6]) < 1e-5
    assert "merged (2 branches): 2 × Sequential (a, b), 1 Conv each → 1 grouped Conv" in result.stdout


def test_branches_that_cannot_merge_write_no_merged_file_and_say_why(tmp_path):
    args = ["export", "--model", f"{USER_MODELS}:two_different_views", "--input-shape", "1x10x10x10",
            "--branches", "2", "--layout", "merged", "--out", str(tmp_path)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "not written, the branches stay kept: nothing to merge: branches differ" in result.stdout
    assert list(tmp_path.glob("*.onnx")) == []
    # Where check and bench need the file, the graph they get is stamped as what it is: kept.
    source = ModelSource.from_factory(
        f"{USER_MODELS}:two_different_views", (1, 10, 10, 10), 2, layout="merged"
    )
    artifact = source.artifact(artifacts_dir=tmp_path)
    assert artifact.layout == "kept" and "-kept-" in artifact.path.name and artifact.conv_count == 2


def test_a_model_whose_file_outputs_nan_exits_1_naming_the_output(tmp_path):
    args = ["export", "--model", f"{USER_MODELS}:poisoned", "--input-shape", "1x12x12x12", "--branches", "2",
            "--out", str(tmp_path)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and "non-finite outputs: output (" in result.stdout


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--variant", "model"], "--variant describes ccnbench's own variants"),
        (["--preset", "tiny"], "--preset describes ccnbench's own variants"),
        (["--input-mode", "shared"], "--input-mode describes ccnbench's own variants"),
        (["--seed", "3"], "--seed describes ccnbench's own variants"),
        (["--format", "pt2", "--io", "fp16"], "--io sets an ONNX file's input type"),
        (["--format", "pt2", "--precision", "fp16"], "unknown precision 'fp16'"),
    ],
)
def test_flags_that_make_no_sense_for_a_users_model_are_refused_by_name(extra, words, tmp_path):
    result = runner.invoke(app, ["export", *TWO_VIEW, *extra, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


def test_a_users_model_without_its_input_shape_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["export", "--model", f"{USER_MODELS}:two_view", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--model needs --input-shape" in result.output
    result = runner.invoke(
        app, ["export", "--preset", "tiny", "--input-shape", "1x8x8x8", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--input-shape goes with --model" in result.output


@pytest.mark.slow
def test_fp16_files_and_pt2_packages_of_a_users_model(tmp_path):
    result = runner.invoke(app, ["export", *TWO_VIEW, "--layout", "all", "--precision", "fp16",
                                 "--out", str(tmp_path), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    assert [(f["layout"], f["precision"], f["conv_count"]) for f in files] == [
        ("kept", "fp16", 2),
        ("merged", "fp16", 1),
    ]
    for f in files:  # batch 1 and 2 through ONNX Runtime, each against the float64 kept module
        checked = [(c["key"]["target"], c["key"]["batch"], c["verdict"]) for c in f["validation"]]
        assert checked == [("ort:cpu", 1, "pass"), ("ort:cpu", 2, "pass")]
    assert files[1]["merge"]["description"] == "2 × Sequential (a, b), 1 Conv each → 1 grouped Conv"
    result = runner.invoke(app, ["export", *TWO_VIEW, "--layout", "all", "--format", "pt2",
                                 "--out", str(tmp_path), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    packages = json.loads(result.stdout)["files"]
    assert [p["layout"] for p in packages] == ["kept", "merged"]
    assert all(Path(p["path"]).suffix == ".pt2" and Path(p["path"]).is_file() for p in packages)
    assert all(
        c["verdict"] == "pass" and c["key"]["target"] == "aoti:cpu" for p in packages for c in p["validation"]
    )
