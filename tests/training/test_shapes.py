"""The shape trace: computed for the variants, equal to the real modules' forward shapes."""

import json

import pytest
import typer
from typer.testing import CliRunner

from ccnbench.cli import _OneLineErrors
from ccnbench.errors import UsageError
from ccnbench.models import build_kept, spec_from_preset
from ccnbench.models.spec import PRESETS, SHARED_INPUT_VARIANTS, VARIANTS
from ccnbench.training.commands import register
from ccnbench.training.shapes import trace_module, trace_variant

from helpers import FIXTURES


@pytest.fixture(scope="module")
def app():
    app = typer.Typer(cls=_OneLineErrors, pretty_exceptions_enable=False)
    register(app)
    return app


CASES = [(p, v, "separate") for p in PRESETS for v in VARIANTS] + [
    (p, v, "shared") for p in PRESETS for v in SHARED_INPUT_VARIANTS
]


@pytest.mark.parametrize(("preset", "variant", "mode"), CASES)
def test_trace_matches_the_real_modules_forward_shapes(preset, variant, mode):
    computed = trace_variant(preset, variant, input_mode=mode)
    spec = spec_from_preset(preset, variant, input_mode=mode)
    real = trace_module(build_kept(spec), spec.input_shape, spec.num_inputs)
    real_shapes = {layer.name: layer.shape for layer in real.layers}
    traced = [layer for layer in computed.layers if layer.kind != "Flatten"]
    assert len(traced) == 5 * spec.depth
    for layer in traced:
        assert real_shapes[layer.name] == layer.shape, layer.name
    assert computed.classifier_in == real.classifier_in
    assert computed.params == real.params


def test_cli_prints_the_trace_of_every_variant_as_json(app):
    result = CliRunner().invoke(app, ["shapes", "--preset", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["label"].split("-")[0] for r in rows] == list(VARIANTS)
    feature = rows[1]
    # tiny: 12^3 -> conv 10 -> pool 9 -> conv 7 -> pool 6, 4 filters, 3 branches
    assert feature["layers"][-2]["shape"] == [4, 6, 6, 6]
    assert feature["classifier_in"] == {"classifier": 3 * 4 * 6**3}


def test_volume_override_changes_the_classifier_size(app):
    result = CliRunner().invoke(
        app, ["shapes", "-v", "model", "-p", "tiny", "--volume", "10x12x14", "--json"]
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["classifier_in"] == {"classifier": 3 * 4 * 4 * 6 * 8}


def test_a_volume_too_small_names_the_layer_where_it_runs_out(app):
    result = CliRunner().invoke(app, ["shapes", "-v", "feature", "-p", "tiny", "--volume", "6"])
    assert result.exit_code == 2
    assert "extractor.1.pool" in result.output and "Traceback" not in result.output
    with pytest.raises(UsageError, match=r"extractors\.0\.1\.conv"):
        trace_variant("tiny", "model", volume=(5, 12, 12))


USER_MODEL = """
from torch import nn

def make():
    return nn.Sequential(
        nn.Conv3d(1, 4, 3), nn.MaxPool3d(2, stride=1), nn.BatchNorm3d(4), nn.LeakyReLU(), nn.Dropout(0.1),
        nn.Flatten(), nn.Linear(4 * 5 * 5 * 5, 30),
    )
"""


def test_user_model_trace_and_its_errors(app, tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(USER_MODEL)
    runner = CliRunner()
    ok = runner.invoke(app, ["shapes", "--model", f"{path}:make", "--input-shape", "1x8x8x8", "--json"])
    assert ok.exit_code == 0, ok.output
    (row,) = json.loads(ok.output)
    assert row["classifier_in"] == {"6": 500}
    assert row["layers"][0] == {"name": "0", "kind": "Conv3d", "shape": [4, 6, 6, 6]}
    wrong = runner.invoke(app, ["shapes", "--model", f"{path}:make", "--input-shape", "1x9x9x9"])
    assert wrong.exit_code == 2
    assert "receives 864 features" in wrong.output and "Linear(864, 30)" in wrong.output
    small = runner.invoke(app, ["shapes", "--model", f"{path}:make", "--input-shape", "1x2x8x8"])
    assert small.exit_code == 2
    assert "at 0 (Conv3d)" in small.output


def test_a_forward_refusing_its_inputs_names_the_forward_and_the_count(app):
    """No layer was entered, so the message names the forward and how many inputs it was given."""
    two_inputs = f"{FIXTURES / 'user_models.py'}:two_view"
    result = CliRunner().invoke(app, ["shapes", "--model", two_inputs, "--input-shape", "1x10x10x10"])
    assert result.exit_code == 2
    assert "(TwoViewNet.forward called with 1 input; --branches sets how many)" in result.output
    assert "module :" not in result.output
