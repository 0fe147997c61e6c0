"""recommend: what ships (a file or the model's code) and --shippable."""

import json

from typer.testing import CliRunner

from ccnbench import results
from ccnbench.backends import BACKENDS
from ccnbench.cli import app
from ccnbench.recommend import recommend, shipped_as

from helpers import case, run


def test_every_backend_declares_what_ships():
    assert shipped_as("torch:cpu") is None and shipped_as("compile:cuda") is None
    assert shipped_as("ort:cpu") == "ONNX file"
    assert shipped_as("aoti:cpu") == ".pt2 package"
    assert shipped_as("tensorrt:cuda") == "TensorRT engine"
    assert shipped_as("openvino:cpu") == "ONNX file (OpenVINO)"
    assert shipped_as("gone:cpu") is None  # a backend this version does not know is not vouched for
    # Driven by the backend, not by its name: every registered backend answers.
    assert {name: b.shipped for name, b in BACKENDS.items()}["compile-graphs"] is None


def test_shippable_keeps_only_file_formats_and_says_which():
    cases = [
        case("compile:cpu", 1.0),
        case("aoti:cpu", 2.0),
        case("openvino:cpu", 3.0),
        case("torch:cpu", 9.0),
    ]
    (fastest,) = recommend(cases)
    assert fastest.best.label == "compile:cpu kept fp32" and fastest.best.ships is None
    assert "needs the model's Python code" in fastest.line()
    (shippable,) = recommend(cases, shippable=True)
    assert (
        shippable.best.label == "aoti:cpu kept fp32" and shippable.runner_up.ships == "ONNX file (OpenVINO)"
    )
    assert ".pt2 package" in shippable.line()
    assert shippable.to_dict()["best"]["shippable"] is True


def test_shippable_with_nothing_shippable_says_so(tmp_path):
    results.save(run(case("torch:cpu", 5.0), case("compile:cpu", 1.0)), tmp_path)
    out = CliRunner().invoke(app, ["recommend", str(tmp_path), "--shippable", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == []
    results.save(run(case("torch:cpu", 5.0), case("ort:cpu", 2.0)), tmp_path)
    out = CliRunner().invoke(app, ["recommend", str(tmp_path), "--shippable"])
    assert out.exit_code == 0 and "ship ort:cpu kept fp32 (ONNX file" in out.output
