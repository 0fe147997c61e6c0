"""`ccnbench check` and the in-process path it shares with the sweep workers."""

import json
import math

import pytest
from typer.testing import CliRunner

from ccnbench.backends import Target, parse_targets
from ccnbench.cli import app
from ccnbench.models import VARIANTS, spec_from_preset
from ccnbench.run import check, failures, plan
from ccnbench.source import ModelSource

from helpers import FIXTURES

runner = CliRunner()
USER_MODELS = FIXTURES / "user_models.py"


def _run(sources, targets, artifacts, precisions=("fp32",), batches=(1, 3), **kw):
    return check.run(plan.case_groups(sources, targets, precisions, batches, artifacts, threads=2, **kw))


# Feature and model fusion (a shared and a per-branch extractor) in `make test`; the other three,
# 20 s together, with the slow tests (CI runs both).
@pytest.mark.parametrize(
    "variant", [v if v in ("feature", "model") else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS]
)
def test_every_variant_and_layout_agrees_on_cpu_targets(variant, artifacts_dir):
    spec = spec_from_preset("tiny", variant, branches=3)
    sources = [ModelSource.from_spec(spec, layout) for layout in ("kept", "merged")]
    results = _run(sources, parse_targets("torch:cpu,ort:cpu"), artifacts_dir)
    assert len(results) == 2 * 2 * 2
    for r in results:
        assert r.status == "ok", r.message
        assert r.passed, r.agreement.to_dict()
        assert r.agreement.max_abs < 1e-5  # fp32 round-off, far inside the tolerance


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_and_layout_agrees_on_compile_cpu(variant, artifacts_dir):
    spec = spec_from_preset("tiny", variant, branches=3)
    sources = [ModelSource.from_spec(spec, layout) for layout in ("kept", "merged")]
    results = _run(sources, [Target("compile", "cpu")], artifacts_dir)
    assert [r.status for r in results] == ["ok"] * 4, [r.message for r in results]
    assert all(r.passed for r in results)
    assert all(r.build_seconds > 0 for r in results)  # compilation is recorded as build cost


def test_fp16_and_bf16_targets_agree_within_their_tolerance(artifacts_dir):
    source = ModelSource.from_spec(spec_from_preset("tiny", "decision", branches=2), "merged")
    results = _run([source], parse_targets("torch:cpu,ort:cpu"), artifacts_dir, precisions=("fp16", "bf16"))
    by_case = {(r.key.target, r.key.precision): r for r in results if r.key.batch == 3}
    assert by_case["torch:cpu", "fp16"].passed and by_case["ort:cpu", "fp16"].passed
    assert by_case["torch:cpu", "bf16"].passed
    # ONNX Runtime has no bf16 path: said so, not run and not failed.
    assert by_case["ort:cpu", "bf16"].status == "unavailable"
    assert "no bf16 path" in by_case["ort:cpu", "bf16"].message
    # Lower precision is visibly less exact than fp32.
    assert by_case["torch:cpu", "fp16"].agreement.max_abs > 1e-5


def test_unavailable_targets_are_reported_not_failed():
    result = runner.invoke(
        app,
        ["check", "--preset", "tiny", "--variant", "early", "--layout", "kept", "--batch", "1",
         "--targets", "torch:cpu,torch:cuda,compile-graphs:cuda,ort:cuda,ort:tensorrt,tensorrt:cuda"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for target in ("torch:cuda", "ort:cuda", "ort:tensorrt", "tensorrt:cuda", "compile-graphs:cuda"):
        assert f"{target}: unavailable: " in result.output
    assert "pip install 'ccnbench[gpu]'" in result.output
    assert "1/1 cases agree" in result.output


def test_poisoned_weight_fails_even_with_huge_tolerances(artifacts_dir):
    args = ["check", "--model", f"{USER_MODELS}:poisoned", "--input-shape", "1x12x12x12", "--branches", "2",
            "--targets", "torch:cpu,ort:cpu", "--batch", "2", "--atol", "1e30", "--rtol", "1e30",
            "--artifacts", str(artifacts_dir), "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is False
    for case in report["cases"]:
        assert case["status"] == "ok" and case["verdict"] == "FAIL"
        assert case["agreement"]["outputs"][0]["nonfinite"] > 0


def _poisoned_onnx(artifacts_dir, path):
    """ccnbench's tiny merged model fusion with one float weight of the ONNX file set to NaN."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from ccnbench.formats.onnx_export import export

    proto = onnx.load(
        str(export(spec_from_preset("tiny", "model", branches=2), "merged", out_dir=artifacts_dir).path)
    )
    weight = next(
        t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1
    )
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(proto, str(path))
    return path


def test_a_file_that_outputs_nan_fails_even_where_it_is_its_own_reference(artifacts_dir, tmp_path):
    poisoned = _poisoned_onnx(artifacts_dir, tmp_path / "poisoned.onnx")
    args = ["check", "--onnx", str(poisoned), "--targets", "ort:cpu", "--batch", "1,2",
            "--artifacts", str(artifacts_dir)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stdout.splitlines() if "non-finite outputs" in line]
    assert len(lines) == 1, result.stdout  # one line for both batch sizes
    assert lines[0].startswith("onnx:poisoned.onnx/merged/ort:cpu/fp32 (batches 1, 2): non-finite outputs")
    assert "logits (" in lines[0]
    table = [line for line in result.stdout.splitlines() if "onnx:poisoned.onnx" in line and "│" in line]
    assert len(table) == 2 and all("FAIL" in line and "reference" not in line for line in table)


def test_non_finite_outputs_fail_the_verdict_and_the_exit_code_whatever_the_source():
    from ccnbench.measure.agreement import Agreement, OutputAgreement
    from ccnbench.results import CaseKey, CaseResult

    nan = OutputAgreement(
        "logits", math.inf, math.inf, math.inf, math.nan, None, 1e30, 1e30, math.inf, 3, False
    )
    key = CaseKey("onnx:x.onnx", "d", "kept", "ort:cpu", "fp32", 1)
    for details in ({"is_reference": True}, {}):  # its own reference (a bare file), or graded by a module
        case = CaseResult(key, "ok", agreement=Agreement((nan,)), details=details)
        assert case.verdict == "FAIL" and not case.passed
        assert check.exit_code([case]) == 1


def test_users_own_module_is_checked_against_its_float64_self(artifacts_dir):
    source = ModelSource.from_factory(f"{USER_MODELS}:two_view", (1, 10, 10, 10), num_inputs=2)
    assert source.output_names == ("output",) and source.input_names == ("input_0", "input_1")
    results = _run([source], parse_targets("torch:cpu,ort:cpu"), artifacts_dir)
    assert all(r.passed for r in results), [r.message for r in results]


def test_a_users_branches_are_merged_by_the_graph_pass_and_graded_against_the_kept_module(artifacts_dir):
    merged = ModelSource.from_factory(f"{USER_MODELS}:two_view", (1, 10, 10, 10), 2, layout="merged")
    results = _run([merged], parse_targets("torch:cpu,ort:cpu"), artifacts_dir, batches=(1, 3))
    assert all(r.passed for r in results), [r.message for r in results]
    for r in results:
        assert r.details["merge"]["merged"] is True
        assert r.details["merge"]["description"].startswith("2 × Sequential")
    onnx_case = next(r for r in results if r.key.target == "ort:cpu")
    assert onnx_case.artifact["conv_count"] == 1  # the two branches' Conv3d became one grouped Conv


def test_branches_that_differ_run_kept_with_the_reason(artifacts_dir):
    merged = ModelSource.from_factory(
        f"{USER_MODELS}:two_different_views", (1, 10, 10, 10), 2, layout="merged"
    )
    results = _run([merged], parse_targets("torch:cpu,ort:cpu"), artifacts_dir, batches=(2,))
    assert all(r.passed for r in results), [r.message for r in results]
    for r in results:
        assert r.details["merge"]["merged"] is False and "differ" in r.details["merge"]["reason"]
    assert next(r for r in results if r.key.target == "ort:cpu").artifact["conv_count"] == 2


def test_a_user_factory_returning_a_ccnbench_variant_can_be_merged(artifacts_dir):
    sources = [
        ModelSource.from_factory(f"{USER_MODELS}:ours", (1, 12, 12, 12), 3, layout)
        for layout in ("kept", "merged")
    ]
    results = _run(sources, parse_targets("torch:cpu,ort:cpu"), artifacts_dir, batches=(2,))
    assert all(r.passed for r in results), [r.message for r in results]
    merged_onnx = next(r for r in results if r.key.layout == "merged" and r.key.target == "ort:cpu")
    assert merged_onnx.artifact["conv_count"] == 2  # one Conv per layer: really merged


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--targets", "ort:gpu"], "ort has no device 'gpu'"),
        (["--targets", "onnx:cpu"], "unknown backend 'onnx'"),
        (["--targets", "torch"], "not of the form backend:device"),
        (["--batch", "0"], "batch sizes must be >= 1"),
        (["--precision", "int4"], "unknown precision 'int4'"),
        (["--tol", "logits"], "expected name=atol"),
        (
            ["--model", "no_such_module_xyz:f", "--input-shape", "1x8x8x8"],
            "cannot import 'no_such_module_xyz'",
        ),
        (["--model", "json:dumps"], "needs --input-shape"),
        (["--onnx", "/no/such/file.onnx"], "no ONNX file at /no/such/file.onnx"),
    ],
)
def test_bad_input_is_one_clear_line(args, words):
    result = runner.invoke(app, ["check", "--preset", "tiny", *args])
    assert result.exit_code in (1, 2), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.output


def test_a_factory_that_raises_is_a_failed_case_not_a_crash(artifacts_dir):
    args = ["check", "--model", f"{USER_MODELS}:raises", "--input-shape", "1x8x8x8", "--targets", "torch:cpu",
            "--batch", "1", "--artifacts", str(artifacts_dir)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "RuntimeError: the user's factory is broken" in result.output


@pytest.mark.slow
def test_dynamic_batch_compiles_fewer_graphs_with_the_same_answers(artifacts_dir):
    import torch

    from ccnbench.backends.compiled import warm_compiler

    source = ModelSource.from_spec(spec_from_preset("tiny", "model", branches=3), "merged")
    warm_compiler("cpu", 1)  # its one trivial graph is the process's, not the member's
    graphs = {}
    for dynamic in (False, True):
        torch._dynamo.utils.counters.clear()
        results = _run(
            [source], [Target("compile", "cpu")], artifacts_dir, batches=(1, 4, 8), dynamic_batch=dynamic
        )
        assert all(r.passed for r in results), [r.message for r in results]
        assert results[0].details["dynamic_batch"] is dynamic
        graphs[dynamic] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # One graph per batch size when static; when dynamic, one for 4 and 8 plus dynamo's batch-1 specialisation.
    assert graphs == {False: 3, True: 2}


def test_unavailable_and_failed_results_are_built_in_one_place(tmp_path):
    source = ModelSource.from_spec(spec_from_preset("tiny", "early"))
    (group,) = plan.case_groups([source], parse_targets("ort:cpu"), ["fp32"], [1, 2], tmp_path)
    gone = failures.unavailable(group, "no runtime here", contest="c")
    assert [(c.key.batch, c.status, c.message, c.contest, c.spec) for c in gone] == [
        (b, "unavailable", "no runtime here", "c", source.spec.to_dict()) for b in (1, 2)
    ]
    cut = failures.failed(group, "worker killed", group.case_keys()[1:], status="timeout")
    assert [(c.key.batch, c.status, c.message, c.artifact) for c in cut] == [
        (2, "timeout", "worker killed", None)
    ]
    try:
        raise ValueError("two\n   lines")
    except ValueError as exc:
        assert failures.describe(exc).startswith("ValueError: two lines (test_check.py:")
