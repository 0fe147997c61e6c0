"""AOTInductor packages: cache key, reuse, --force, damage detection, the CLI, and the aoti target."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

import ccnbench.source.factory
from ccnbench.backends import BuildOptions, Target, aoti_build, backend_of
from ccnbench.cli import app
from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.models import spec_from_preset
from ccnbench.run.case_group import run_group
from ccnbench.run.plan import CaseGroup
from ccnbench.source import ModelSource

from helpers import FIXTURES

cli = CliRunner()


def _source(variant="decision", layout="merged"):
    return ModelSource.from_spec(spec_from_preset("tiny", variant), layout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One package built once for the module (a C++ compile: ~10-30 s)."""
    out = tmp_path_factory.mktemp("pt2")
    return aoti_build.package(_source(), "cpu", "fp32", out)


def test_the_name_changes_with_everything_that_changes_the_bytes():
    names = {
        aoti_build.package_name(_source(), "cpu", "fp32"),
        aoti_build.package_name(_source(layout="kept"), "cpu", "fp32"),
        aoti_build.package_name(_source(), "cpu", "bf16"),
        aoti_build.package_name(_source("multitask"), "cpu", "fp32"),
        aoti_build.package_name(
            ModelSource.from_spec(spec_from_preset("tiny", "decision", seed=1), "merged"), "cpu", "fp32"
        ),
    }
    assert len(names) == 5
    assert aoti_build.package_name(_source(), "cpu", "fp32") == aoti_build.package_name(
        _source(), "cpu", "fp32"
    )
    assert all(n.endswith(".pt2") for n in names)


def test_a_user_models_name_follows_its_weights(monkeypatch):
    fixtures = FIXTURES / "user_models.py"
    source = ModelSource.from_factory(f"{fixtures}:two_view", (1, 10, 10, 10), num_inputs=2)
    name = aoti_build.package_name(source, "cpu", "fp32")
    assert name.startswith("user-user_models-two_view-kept-fp32-cpu-") and name.endswith(".pt2")
    monkeypatch.setattr(
        torch, "manual_seed", lambda seed: torch.random.default_generator.manual_seed(seed + 1)
    )
    monkeypatch.setattr(ccnbench.source.factory, "_modules", {})  # a new process: the factory runs again
    edited = ModelSource.from_factory(f"{fixtures}:two_view", (1, 10, 10, 10), num_inputs=2)
    assert aoti_build.package_name(edited, "cpu", "fp32") != name  # new weights never reuse an old package


def test_bad_requests_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"no fp16 \.pt2 package on cpu"):
        aoti_build.package(_source(), "cpu", "fp16", tmp_path)
    with pytest.raises(UsageError, match="cpu or cuda"):
        aoti_build.package(_source(), "tensorrt", "fp32", tmp_path)


def test_missing_or_foreign_files_are_not_packages(tmp_path):
    path = tmp_path / "x.pt2"
    assert aoti_build.load(path, missing_ok=True) is None
    path.write_bytes(b"not a package")
    with pytest.raises(CcnbenchError, match=r"not a ccnbench \.pt2 package"):
        aoti_build.load(path)


def test_missing_compiler_is_unavailable(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    reason = backend_of(Target("aoti", "cpu")).availability("cpu")
    assert reason and "C++ compiler" in reason and "AOTInductor" in reason


@pytest.mark.slow
def test_a_package_is_reused_unless_forced_and_rebuilt_when_damaged(built):
    assert not built.reused and built.build_seconds > 0 and built.dynamic_batch
    described = json.loads(built.metadata_path.read_text())
    assert described["sha256"] == built.sha256 and described["layout"] == "merged"
    again = aoti_build.package(_source(), "cpu", "fp32", built.path.parent)
    assert again.reused and again.sha256 == built.sha256 and again.build_seconds == built.build_seconds
    # Runs without the model's code, at any batch size, and says what it is.
    model = torch._inductor.aoti_load_package(str(built.path))
    assert model.get_metadata()["model"] == "decision-n3@tiny"
    assert model(*_source().make_inputs(5)).shape[0] == 5
    # A damaged file does not match its description: never run, built again.
    damaged = bytearray(built.path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    built.path.write_bytes(bytes(damaged))
    with pytest.raises(CcnbenchError, match="does not match"):
        aoti_build.load(built.path)
    rebuilt = aoti_build.package(_source(), "cpu", "fp32", built.path.parent)
    assert not rebuilt.reused and aoti_build.load(rebuilt.path) is not None
    forced = aoti_build.package(_source(), "cpu", "fp32", built.path.parent, force=True)
    assert not forced.reused and forced.build_seconds != rebuilt.build_seconds


@pytest.mark.slow
def test_export_format_pt2_writes_and_then_reuses_the_package(built):
    args = ["export", "--format", "pt2", "-v", "decision", "--layout", "merged", "--preset", "tiny"]
    out = cli.invoke(app, [*args, "--out", str(built.path.parent), "--json"])
    assert out.exit_code == 0, out.output
    (listed,) = json.loads(out.output)
    assert listed["file"] == built.path.name and listed["reused"] and listed["format"] == "pt2"


def test_export_format_errors_are_one_line():
    out = cli.invoke(app, ["export", "--format", "pt3"])
    assert out.exit_code == 2 and "choose onnx or pt2" in out.output
    out = cli.invoke(app, ["export", "--format", "pt2", "--engine"])
    assert out.exit_code == 2 and "--format onnx" in out.output
    out = cli.invoke(app, ["export", "--format", "pt2", "--precision", "fp16"])
    assert out.exit_code == 2 and "fp16" in out.output


@pytest.mark.slow
@pytest.mark.parametrize("variant,layout", [("decision", "merged"), ("multitask", "kept")])
def test_aoti_agrees_with_the_oracle_without_the_models_code(variant, layout, built, monkeypatch):
    source = _source(variant, layout)
    options = BuildOptions(batch_sizes=(1, 3), threads=2, artifacts_dir=built.path.parent)
    aoti_build.package(source, "cpu", "fp32", built.path.parent)  # the sweep's parent builds it
    # The runner must only load the package: building the module now fails (the float64 oracle
    # still builds its own kept module through module_for).
    monkeypatch.setattr(ModelSource, "module", lambda self: pytest.fail("the runner built the module"))
    group = CaseGroup(source, Target("aoti", "cpu"), "fp32", (1, 3), options)
    results = list(run_group(group))
    for r in results:
        assert r.status == "ok", r.message
        assert r.agreement.passed and r.agreement.max_abs < 1e-4
        assert r.details["package_reused"] and r.artifact["file"].endswith(".pt2")


@pytest.mark.gpu
@pytest.mark.slow
def test_aoti_cuda_agrees_with_the_oracle_in_strict_fp32(tmp_path):
    source = _source("feature", "merged")
    options = BuildOptions(batch_sizes=(1, 4), threads=2, artifacts_dir=tmp_path)
    results = list(run_group(CaseGroup(source, Target("aoti", "cuda"), "fp32", (1, 4), options)))
    for r in results:
        assert r.status == "ok", r.message
        assert r.agreement.passed and r.details["tf32"] is False
        assert r.details["package_machine"].startswith("sm")
