"""A user's ONNX file is checked against something real: its PyTorch module or saved outputs.

The file here is the fixture's two-view network exported with every weight multiplied by 3:
the mistake a user wants `check` to catch.
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ccnbench.cli import app
from ccnbench.formats.onnx_export import export_module
from ccnbench.formats.saved_reference import encode_array
from ccnbench.source import ModelSource

from helpers import FIXTURES

runner = CliRunner()
USER_MODELS = FIXTURES / "user_models.py"
FACTORY = f"{USER_MODELS}:two_view"
SHAPE = (1, 10, 10, 10)


def _exported(tmp_path, name, scale):
    source = ModelSource.from_factory(FACTORY, SHAPE, 2)
    module = source.module()
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(scale)
    return export_module(module, source.input_names, SHAPE, tmp_path / name, source.output_names).path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("user-onnx")
    return {
        "right": _exported(tmp, "right.onnx", 1.0),
        "wrong": _exported(tmp, "wrong.onnx", 3.0),
        "dir": tmp,
    }


def _check(*args, targets="ort:cpu"):
    result = runner.invoke(app, ["check", "--targets", targets, "--json", *map(str, args)])
    cases = json.loads(result.stdout)["cases"] if result.stdout.strip().startswith("{") else []
    return result, cases


@pytest.mark.parametrize(("name", "code", "verdict"), [("right", 0, "pass"), ("wrong", 1, "FAIL")])
def test_the_file_is_checked_against_the_pytorch_module_it_came_from(files, name, code, verdict):
    result, cases = _check(
        "--onnx", files[name], "--model", FACTORY, "--batch", "1,2", targets="ort:cpu,torch:cpu"
    )
    assert result.exit_code == code, result.output
    by_target = {
        t: [c["verdict"] for c in cases if c["key"]["target"] == t] for t in ("ort:cpu", "torch:cpu")
    }
    # The file is graded; the module itself (eager torch) agrees with its own float64 run.
    assert by_target == {"ort:cpu": [verdict, verdict], "torch:cpu": ["pass", "pass"]}
    assert cases[0]["key"]["model"] == f"onnx:{name}.onnx"


def _saved(files, fmt):
    """Reference inputs and the true module's outputs, as Polygraphy or NumPy would save them."""
    source = ModelSource.from_factory(FACTORY, SHAPE, 2)
    inputs = source.make_inputs(3, seed=5)
    (output,) = source.oracle(inputs)
    feeds = {name: x.numpy() for name, x in zip(source.input_names, inputs)}
    outs = {"output": output.float().numpy()}
    d = files["dir"]
    if fmt == "npz":
        np.savez(d / "in.npz", **feeds)
        np.savez(d / "out.npz", **outs)
        return d / "in.npz", d / "out.npz"
    inputs_json = [{k: encode_array(v) for k, v in feeds.items()}]
    iteration = {"outputs": {k: {"values": encode_array(v), "polygraphy_class": "LazyArray"} for k, v in outs.items()},
                 "runtime": 0.1, "runner_name": "onnxrt-runner-N0", "polygraphy_class": "IterationResult"}  # fmt: skip
    results_json = {"lst": [["onnxrt-runner-N0", [iteration]]], "polygraphy_class": "RunResults"}
    (d / "in.json").write_text(json.dumps(inputs_json))
    (d / "out.json").write_text(json.dumps(results_json))
    return d / "in.json", d / "out.json"


@pytest.mark.parametrize("fmt", ["polygraphy", "npz"])
def test_the_file_is_checked_against_saved_reference_outputs(files, fmt):
    inputs, outputs = _saved(files, fmt)
    for name, code, verdict in (("right", 0, "pass"), ("wrong", 1, "FAIL")):
        result, cases = _check("--onnx", files[name], "--load-inputs", inputs, "--load-outputs", outputs)
        assert result.exit_code == code, result.output
        # The saved inputs decide the batch: one case at batch 3.
        assert [(c["key"]["batch"], c["verdict"]) for c in cases] == [(3, verdict)]


def test_without_a_reference_the_file_is_only_its_own_reference(files):
    result = runner.invoke(app, ["check", "--onnx", str(files["wrong"]), "--targets", "ort:cpu,torch:cpu"])
    assert result.exit_code == 0, result.output
    assert "reference" in result.output and "agree with the oracle" not in result.output
    assert "nothing independent was checked" in " ".join(result.output.split())
    _, cases = _check("--onnx", files["wrong"])
    assert {c["verdict"] for c in cases} == {"reference"}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--load-inputs", "x.json"], "go together"),
        (
            ["--load-inputs", "/no/in.json", "--load-outputs", "/no/out.json"],
            "no saved inputs at /no/in.json",
        ),
        (["--input-shape", "1x2x2x2"], "comes from the --onnx file"),
    ],
)
def test_bad_reference_options_are_one_line(files, args, words):
    result = runner.invoke(app, ["check", "--onnx", str(files["right"]), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], result.output


def test_saved_outputs_must_name_the_files_outputs(files):
    d = files["dir"]
    np.savez(
        d / "in2.npz", input_0=np.zeros((1, *SHAPE), np.float32), input_1=np.zeros((1, *SHAPE), np.float32)
    )
    np.savez(d / "out2.npz", logits=np.zeros((1, 5), np.float32))
    result = runner.invoke(app, ["check", "--onnx", str(files["right"]), "--load-inputs", str(d / "in2.npz"),
                                 "--load-outputs", str(d / "out2.npz")])  # fmt: skip
    assert result.exit_code == 2 and "no output named 'output' (it holds logits)" in result.output
