"""`ccnbench roofs` and the roofline in `ccnbench explain`, end to end on the tiny preset with the
real runtimes (no timing thresholds: the figures are checked against their own definitions)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from ccnbench.cli import app
from ccnbench.models import build_kept, merge, spec_from_preset

runner = CliRunner()
QUICK = ["--rounds", "1", "--calls", "3", "--threads", "1"]


def test_roofs_lists_each_runtimes_gemm_and_the_memory_roof():
    result = runner.invoke(app, ["roofs", "--targets", "torch:cpu,ort:cpu", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    labels = [r["label"] for r in data["roofs"]]
    assert labels == [
        "torch fp32 on cpu, 1 thread(s)",
        "memory on cpu, 1 thread(s)",
        "onnxruntime fp32 on cpu, 1 thread(s)",
    ]
    for row in data["roofs"]:
        roof = row["roof"]
        assert roof["rate"] == max(roof["repeats"]) and len(roof["repeats"]) == 5
    table = runner.invoke(app, ["roofs", "--targets", "ort:cpu", "--threads", "1"])
    assert table.exit_code == 0 and "onnxruntime fp32 on cpu" in table.output and "spread" in table.output


def test_roofs_says_one_line_for_a_bad_target():
    result = runner.invoke(app, ["roofs", "--targets", "ort"])
    assert result.exit_code == 2 and "backend:device" in result.output
    assert "Traceback" not in result.output


def _conv_flops(variant: str, layout: str, batch: int) -> dict[str, int]:
    spec = spec_from_preset("tiny", variant, branches=3)
    module = build_kept(spec).eval()
    module = merge(module).eval() if layout == "merged" else module
    counter = FlopCounterMode(display=False)
    inputs = [torch.randn(batch, *spec.input_shape) for _ in range(spec.num_inputs)]
    with counter, torch.no_grad():
        module(*inputs)
    root = type(module).__name__
    return {k.removeprefix(root + "."): int(sum(v.values())) for k, v in counter.get_flop_counts().items()}


@pytest.mark.parametrize("layout", [pytest.param("kept", marks=pytest.mark.slow), "merged"])  # kept: 7 s
def test_explain_reads_each_layer_against_its_runtimes_roofs(tmp_path, layout):
    args = ["explain", "--preset", "tiny", "--variant", "model", "--layout", layout, "--batch", "2",
            "--targets", "ort:cpu,openvino:cpu", *QUICK, "--artifacts", str(tmp_path), "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    families = {r["key"]["family"] for r in data["roofs"]}
    assert families == {"onnxruntime", "openvino", "memory"}
    (table,) = data["tables"]
    reference = _conv_flops("model", layout, 2)
    convs = 0
    for row in table["rows"]:
        names = set(row["names"][0])
        for cell in row["cells"]:
            if cell is None or cell["flops"] is None:
                continue
            # A row's FLOPs are its modules' FlopCounterMode counts; its reading is those FLOPs
            # and bytes over the row's own time.
            assert cell["flops"] == sum(reference.get(n, 0) for n in names), row["label"]
            reading = cell["reading"]
            assert reading["seconds"] == pytest.approx(cell["us"] / 1e6)
            assert reading["bound"] in ("memory", "compute") and reading["of_roof"] > 0
            convs += row["label"].endswith("conv")
    assert convs >= 2 * 2  # two Conv rows (kept: per branch, collapsed) in both columns
    assert all(c is not None and c["bound"] for c in table["calls"])


def test_explain_without_the_roofline_counts_nothing(tmp_path):
    args = ["explain", "--preset", "tiny", "--variant", "model", "--layout", "merged", "--targets", "ort:cpu",
            *QUICK, "--artifacts", str(tmp_path), "--no-roofline", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["roofs"] == []
    assert all(c is None or c["flops"] is None for r in data["tables"][0]["rows"] for c in r["cells"])
    printed = runner.invoke(app, args[:-1])
    assert "against the roofs" not in printed.output
    with_roofs = runner.invoke(app, [a for a in args[:-1] if a != "--no-roofline"])
    assert "against the roofs" in with_roofs.output and "ridge" in with_roofs.output
