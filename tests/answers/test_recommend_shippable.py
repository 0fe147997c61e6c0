"""recommend: what ships (a file or the model's code) and --shippable."""

import json

from typer.testing import CliRunner

from ccnbench import results
from ccnbench.answers.recommend import recommend, shipped_as
from ccnbench.backends import BACKENDS
from ccnbench.cli import app

from helpers import case, run


def test_a_format_is_shippable_exactly_when_its_runner_loads_a_file():
    """Every registered backend, one case each: --shippable keeps the ones whose runner is built
    from a file (ONNX, .pt2), names that file in its answer, and drops those that run the model's
    own Python code. A backend this version does not know is never vouched for."""
    cases = [case(f"{name}:cpu", 1.0 + i, model=name) for i, name in enumerate(BACKENDS)]
    kept = {r.model: r for r in recommend(cases, shippable=True)}
    for name, backend in BACKENDS.items():
        assert (name in kept) == (backend.file_format is not None), name
        if name in kept:
            assert kept[name].best.ships and kept[name].best.ships in kept[name].line()
    everything = {r.model: r for r in recommend(cases)}
    assert set(everything) == set(BACKENDS) > set(kept)
    code = [r for r in everything.values() if r.model not in kept]
    assert code and all("needs the model's Python code" in r.line() for r in code)
    assert shipped_as("gone:cpu") is None and recommend([case("gone:cpu", 1.0)], shippable=True) == []


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
