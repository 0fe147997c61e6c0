import json

import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from ccnbench import __version__
from ccnbench.cli import app, main
from ccnbench.models import build_kept, spec_from_preset

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_variants_table_lists_every_variant():
    result = runner.invoke(app, ["variants", "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    for label in (
        "early-n3@tiny",
        "feature-n3@tiny",
        "model-n3@tiny",
        "model-n3-shared@tiny",
        "decision-n3@tiny",
    ):
        assert label in result.output


def test_variants_json_matches_the_models():
    result = runner.invoke(app, ["variants", "--preset", "tiny", "--branches", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    model = next(r for r in rows if r["label"] == "model-n2@tiny")
    spec = spec_from_preset("tiny", "model", branches=2)
    # Checked against independent counts, not the functions the command itself calls.
    module = build_kept(spec).eval()
    assert model["params_kept"] == sum(p.numel() for p in module.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*(torch.randn(1, *spec.input_shape) for _ in range(spec.num_inputs)))
    assert model["flops_per_sample"] == counter.get_total_flops()
    decision = next(r for r in rows if r["label"] == "decision-n2@tiny")
    # The folded classifier has one bias vector instead of N.
    assert decision["params_kept"] - decision["params_merged"] == spec.classes


def test_env_reports_versions_and_providers():
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows["torch"].startswith("2.")
    assert "CPUExecutionProvider" in rows["onnxruntime providers"]
    assert rows["tensorrt"]  # a version or 'unavailable: <reason>'
    table = runner.invoke(app, ["env"])
    assert table.exit_code == 0 and "onnxruntime" in table.output


def test_main_returns_exit_codes_without_raising(capsys):
    assert main(["variants", "--preset", "tiny", "--json"]) == 0
    assert main(["variants", "--branches", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error: invalid spec: branches")
