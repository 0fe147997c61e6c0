import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from ccnbench import __version__
from ccnbench.cli import app, main
from ccnbench.models import build_kept, spec_from_preset
from ccnbench.run import export_files

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


def test_export_engine_jobs_build_one_engine_per_file_with_the_engine_batches(monkeypatch):
    """``export --engine``: one job per ONNX file, each handing it to TensorRT with --engine-batch's
    sizes (the builder replaced: no TensorRT needed); no --engine, no jobs."""
    import ccnbench.backends.tensorrt as tensorrt

    built = []
    monkeypatch.setattr(
        tensorrt,
        "export_engine",
        lambda a, options: built.append((a.path, options)) or {"engine": a.path.stem},
    )
    files = [
        SimpleNamespace(path=Path(f"/x/{name}.onnx"), precision="fp16", io="fp32")
        for name in ("kept", "merged")
    ]
    jobs = export_files.engine_jobs(files, (1, 8), Path("/x"))
    assert [job.run(lambda note: None) for job in jobs] == [(f.path, {"engine": f.path.stem}) for f in files]
    assert [(path.name, o.batch_sizes, o.precision, o.artifacts_dir) for path, o in built] == [
        (f"{name}.onnx", (1, 8), "fp16", Path("/x")) for name in ("kept", "merged")
    ]
    assert export_files.engine_jobs(files, None, Path("/x")) == []


def test_bench_help_names_exactly_the_bundled_sweeps():
    import re

    from typer.main import get_command

    bundled = sorted(p.stem for p in (Path(__file__).parent.parent / "ccnbench" / "sweeps").glob("*.toml"))
    option = next(p for p in get_command(app).commands["bench"].params if "--config" in p.opts)
    assert option.help.split("bundled sweep's name: ", 1)[1].rstrip(".").split(", ") == bundled
    shown = runner.invoke(app, ["bench", "--help"])
    flat = "".join(re.sub(r"[│╭╮╰╯─]", " ", shown.output).split())  # the help as rich wrapped it, unwrapped
    assert shown.exit_code == 0 and ",".join(bundled) + "." in flat


RECORDED_RUN = Path(__file__).parent / "fixtures" / "ci-quick-amd-epyc-2026-12-06" / "a.json"


@pytest.mark.parametrize("fmt", ["github-action-benchmark", "bencher"])
def test_report_writes_a_dashboard_file(fmt, tmp_path):
    out = tmp_path / "dash" / f"{fmt}.json"
    result = runner.invoke(app, ["report", str(RECORDED_RUN), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote 20 benchmarks to {out}" in " ".join(result.output.split())
    data = json.loads(out.read_text(encoding="utf-8"))
    assert len(data) == 20  # one entry per case that is not eager PyTorch's own


def test_report_refuses_an_unknown_format_in_one_line(capsys, tmp_path):
    assert main(["report", str(RECORDED_RUN), "--format", "csv", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown --format 'csv'; choose from report, github-action-benchmark, bencher"
    assert not (tmp_path / "x.json").exists()


def test_report_help_names_every_format():
    from typer.main import get_command

    from ccnbench.answers.dashboard import FORMATS

    option = next(p for p in get_command(app).commands["report"].params if "--format" in p.opts)
    for name in ("report", *FORMATS):
        assert name in option.help
