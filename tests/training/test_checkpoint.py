"""A checkpoint trained for a few steps in the kept layout: merged, exported, checked, and back."""

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from ccnbench.cli import _OneLineErrors
from ccnbench.models import build_kept, spec_from_preset
from ccnbench.training.commands import register
from ccnbench.training.step import make_batch, make_optimizer, step


@pytest.fixture(scope="module")
def app():
    app = typer.Typer(cls=_OneLineErrors, pretty_exceptions_enable=False)
    register(app)
    return app


def _trained(variant, path, steps=3):
    """A kept model trained for a few steps (its BatchNorm statistics moved too), saved to ``path``."""
    spec = spec_from_preset("tiny", variant)
    model = build_kept(spec).train()
    opt = make_optimizer("sgd", model.parameters(), lr=0.01)
    for i in range(steps):
        step(model, make_batch(spec, 4, seed=i), opt)
    torch.save(model.state_dict(), path)
    return model.eval()


@pytest.mark.parametrize("variant", ["feature", "multitask", "model"])
def test_trained_checkpoint_merges_exports_and_converts_back(app, tmp_path, variant):
    trained = _trained(variant, tmp_path / "ckpt.pt")
    assert not torch.equal(
        trained.state_dict()["classifier.weight"], build_kept(trained.spec).state_dict()["classifier.weight"]
    )
    runner = CliRunner()
    args = ["checkpoint", str(tmp_path / "ckpt.pt"), "-v", variant, "-p", "tiny", "-o", str(tmp_path),
            "--format", "onnx", "--save-merged", str(tmp_path / "merged.pt"), "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["invertible"]
    assert report["merged_difference"] < 1e-10 and report["roundtrip_difference"] < 1e-10
    assert report["files"][0]["format"] == "onnx" and report["files"][0]["passed"]
    back = runner.invoke(app, ["unmerge", str(tmp_path / "merged.pt"), "-o", str(tmp_path / "kept.pt"),
                               "-v", variant, "-p", "tiny"])  # fmt: skip
    assert back.exit_code == 0, back.output
    restored = torch.load(tmp_path / "kept.pt", weights_only=True)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(restored[name], tensor), name
    rebuilt = build_kept(trained.spec)
    rebuilt.load_state_dict(restored)
    x = make_batch(trained.spec, 2, seed=9).inputs
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(*x), trained(*x), rtol=0, atol=0)


def test_decision_checkpoint_merges_but_does_not_convert_back(app, tmp_path):
    _trained("decision", tmp_path / "ckpt.pt", steps=1)
    runner = CliRunner()
    result = runner.invoke(app, ["checkpoint", str(tmp_path / "ckpt.pt"), "-v", "decision", "-p", "tiny",
                                 "--format", "none", "--save-merged", str(tmp_path / "m.pt"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["invertible"] is False and report["roundtrip_difference"] is None
    back = runner.invoke(app, ["unmerge", str(tmp_path / "m.pt"), "-o", str(tmp_path / "k.pt"), "-v", "decision",
                               "-p", "tiny"])  # fmt: skip
    assert back.exit_code == 1 and "not invertible" in back.output


def test_a_checkpoint_of_other_flags_is_a_usage_error(app, tmp_path):
    _trained("feature", tmp_path / "ckpt.pt", steps=1)
    result = CliRunner().invoke(app, ["checkpoint", str(tmp_path / "ckpt.pt"), "-v", "feature", "-p", "small",
                                      "--format", "none"])  # fmt: skip
    assert result.exit_code == 2
    assert "does not fit feature-n3@small" in result.output


@pytest.mark.slow
def test_trained_checkpoint_as_a_pt2_package(app, tmp_path):
    _trained("model", tmp_path / "ckpt.pt", steps=2)
    result = CliRunner().invoke(app, ["checkpoint", str(tmp_path / "ckpt.pt"), "-v", "model", "-p", "tiny",
                                      "-o", str(tmp_path), "--format", "pt2", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["files"][0]["format"] == "pt2" and report["files"][0]["passed"]


def test_a_missing_checkpoint_is_named_as_the_argument_it_is(app, tmp_path):
    result = CliRunner().invoke(app, ["checkpoint", str(tmp_path / "none.pt"), "-v", "model", "-p", "tiny"])
    assert result.exit_code == 2
    assert (
        f"WEIGHTS {tmp_path / 'none.pt'}: no such file" in result.output and "--weights" not in result.output
    )
