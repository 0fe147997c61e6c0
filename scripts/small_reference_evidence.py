"""Evidence for grading small references: an untrained MONAI EfficientNet-B0 pair, right and wrong.

Regenerates results/small-reference-evidence/evidence.json and README.md. The network is
``tests/fixtures/library_models.py:two_efficientnet_b0`` (two 3D EfficientNet-B0s as MONAI builds
them, before training, logits averaged; logits about 1e-14), batch 2 of 1x32x32x32 volumes, seed 0,
each output graded against the float64 oracle twice:

- before: the rule of 6f6a2e9, ``|y - ref| <= atol + rtol * |ref|`` with the precision's default
  atol/rtol and NaN/Inf failing (reimplemented here: the faults below did not exist then);
- after: ``agreement.compare`` as ccnbench grades now (below R = 0.05 the default atol is
  ``SMALL_SCALE_ATOL`` times R, constant outputs fail, ``vacuous`` where no file could fail),
  read through ``CaseResult.verdict``.

Two sides: correct exports (eager PyTorch in fp32 and fp16; ONNX Runtime and OpenVINO running the
ONNX file in fp32 and fp16, prepared by the backends as a sweep prepares them), and every generic
fault of ``ccnbench.models.faults`` injected into the module and run by PyTorch on the CPU in fp32
and fp16. A fault whose fp32 outputs move by less than 1e-5 of R is listed as harmless (BatchNorm
statistics reset on a network whose statistics are still 0 and 1 changes nothing).

Usage: PYTHONPATH=. python scripts/small_reference_evidence.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from fp16_evidence import faulty_outputs, run_target  # scripts/ is on the path: this file runs as a script

from ccnbench import environment
from ccnbench.measure.agreement import (
    DEFAULT_TOLERANCES,
    SMALL_SCALE_ATOL,
    TolerancePolicy,
    compare,
    tolerance_from_evidence,
)
from ccnbench.results import CaseKey, CaseResult
from ccnbench.source import ModelSource
from ccnbench.source.factory_loading import load_factory

FACTORY = "tests/fixtures/library_models.py:two_efficientnet_b0"
SHAPE = (1, 32, 32, 32)
BATCH = 2
PRECISIONS = ("fp32", "fp16")
TARGETS = ("torch:cpu", "ort:cpu", "openvino:cpu")
HARMLESS = 1e-5  # a fault that moves the fp32 outputs by less than this fraction of R changed nothing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/small-reference-evidence"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.monotonic()
    source = ModelSource.from_factory(FACTORY, SHAPE, 2, "kept")
    inputs = source.make_inputs(BATCH, 0)
    expected = source.oracle(inputs)
    with tempfile.TemporaryDirectory(prefix="ccnbench-small-") as artifacts:
        rows = correct_rows(source, inputs, expected, Path(artifacts))
    rows += bug_rows(source, inputs, expected)
    evidence = {
        "machine": f"{environment.collect().cpu} ({platform.machine()}), torch {torch.__version__}",
        "command": "PYTHONPATH=. python scripts/small_reference_evidence.py",
        "seconds": round(time.monotonic() - started, 1),
        "model": FACTORY,
        "input": f"batch {BATCH} of {'x'.join(map(str, SHAPE))}, seed 0",
        "reference_scale": max(float(r.abs().max()) for r in expected),
        "tolerances": {p: vars(DEFAULT_TOLERANCES[p]) for p in PRECISIONS},
        "summary": summarise(rows),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evidence.json").write_text(json.dumps(evidence, indent=1) + "\n")
    (args.out / "README.md").write_text(markdown(evidence))
    print(markdown(evidence))


def correct_rows(source: ModelSource, inputs: Any, expected: Any, artifacts: Path) -> list[dict[str, Any]]:
    rows = []
    for text in TARGETS:
        for precision in PRECISIONS:
            base = {"side": "correct", "target": text, "precision": precision, "fault": None}
            outputs, reason = run_target(source, text, precision, inputs, artifacts)
            if outputs is None:
                rows.append(base | {"unavailable": reason})
            else:
                rows.append(base | graded(outputs, expected, source.output_names, precision))
    return rows


def bug_rows(source: ModelSource, inputs: Any, expected: Any) -> list[dict[str, Any]]:
    kept = load_factory(FACTORY)()
    scale = max(float(r.abs().max()) for r in expected)
    rows, effect = [], math.inf
    for fault, precision, outputs in faulty_outputs(kept, inputs):
        if precision == "fp32":  # first: within its round-off the fault changed nothing
            effect = max(float((y.double() - r).abs().max()) for y, r in zip(outputs, expected)) / scale
        row = {"side": "bug", "target": "torch:cpu", "precision": precision, "fault": fault}
        rows.append(
            row | {"harmless": effect < HARMLESS} | graded(outputs, expected, source.output_names, precision)
        )
    return rows


def graded(outputs: Any, expected: Any, names: Any, precision: str) -> dict[str, Any]:
    """The case's verdict before (6f6a2e9's rule) and after, and how far it is from the oracle."""
    tol = DEFAULT_TOLERANCES[precision]
    before = "pass"
    for y, ref in zip(outputs, expected):
        y = y.detach().to("cpu", torch.float64).reshape(ref.shape)
        if not bool(torch.isfinite(y).all()) or not bool(
            ((y - ref).abs() <= tol.atol + tol.rtol * ref.abs()).all()
        ):
            before = "FAIL"
    agreement = compare(outputs, expected, names, TolerancePolicy(precision))
    key = CaseKey("two_efficientnet_b0", "", "kept", "torch:cpu", precision, BATCH)
    scale = agreement.scale or 1.0
    return {
        "before": before,
        "after": CaseResult(key, "ok", agreement=agreement).verdict,
        "max_abs": agreement.max_abs,
        "relative": agreement.max_abs / scale,  # max |y - ref| over R
        "constant": any(o.constant for o in agreement.outputs),
        "atol_applied": min(o.atol for o in agreement.outputs),
        "vacuous": agreement.vacuous,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for precision in PRECISIONS:
        here = [r for r in rows if r["precision"] == precision and "after" in r]
        for side in ("correct", "bug"):
            group = [r for r in here if r["side"] == side and not r.get("harmless")]
            out[f"{precision} {side}"] = {
                "cases": len(group),
                "harmless": sum(bool(r.get("harmless")) for r in here if r["side"] == side),
                "before": dict(Counter(r["before"] for r in group)),
                "after": dict(Counter(r["after"] for r in group)),
                "least_relative": min((r["relative"] for r in group), default=None),
                "most_relative": max((r["relative"] for r in group), default=None),
            }
        # The fraction of R that separates them, by the rule that set the fp16 tolerance, from the
        # correct files that carried the logits (a constant output fails whatever the tolerance).
        correct = [(r["relative"], 0.0) for r in here if r["side"] == "correct" and not r["constant"]]
        bugs = [(r["relative"], 0.0) for r in here if r["side"] == "bug" and not r["harmless"]]
        if correct and bugs:
            rule, note = tolerance_from_evidence(correct, bugs)
            out[f"{precision} rule"] = {"small_scale_atol": rule.atol, "note": note,
                                        "default": SMALL_SCALE_ATOL[precision]}  # fmt: skip
    return out


def markdown(evidence: dict[str, Any]) -> str:
    e = evidence
    about = (f"Machine: {e['machine']}. {e['model']}, {e['input']}; the reference's scale R = max |ref| = "
             f"{e['reference_scale']:.2e}. Regenerate: `{e['command']}` ({e['seconds']:.0f} s here).")  # fmt: skip
    rule = (
        "Before: 6f6a2e9's rule (absolute atol). After: ccnbench's grading now. relative = max |y - ref| / R."
    )
    lines = [
        "# Grading a small reference: the untrained EfficientNet-B0 pair",
        *("", about, "", rule, ""),
        "| precision | side | cases | before | after | least relative |",
        "|---|---|---:|---|---|---:|",
    ]
    rules = []
    for name, s in evidence["summary"].items():
        precision, side = name.split()
        if side == "rule":
            same = (
                "the default"
                if s["small_scale_atol"] == s["default"]
                else f"NOT the default {s['default']:.0e}"
            )
            rules.append(f"- {precision}: atol = {s['small_scale_atol']:.0e} R ({same}); {s['note']}")
            continue
        least = "" if s["least_relative"] is None else f"{s['least_relative']:.1e}"
        lines.append(
            f"| {precision} | {side} (+{s['harmless']} harmless) | {s['cases']} | {_counts(s['before'])} | "
            f"{_counts(s['after'])} | {least} |"
        )
    lines += [
        "",
        "What the rule (`agreement.tolerance_from_evidence`, on max |y - ref| / R) makes of it:",
        "",
    ]
    lines += rules
    lines += ["", "Each correct export and each kind of fault:", ""]
    lines += ["| what | target | precision | before | after | max abs | relative | atol applied |"]
    lines += ["|---|---|---|---|---|---:|---:|---:|"]
    kinds: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in evidence["rows"]:
        if "after" in r and not r.get("harmless"):
            what = "correct" if r["fault"] is None else r["fault"].split(":")[0]
            what += " (constant)" if r["constant"] else ""
            kinds.setdefault((what, r["target"], r["precision"]), []).append(r)
    for (what, target, precision), members in kinds.items():
        r = min(members, key=lambda m: m["relative"])  # the closest to passing of its kind
        count = f" (least of {len(members)})" if len(members) > 1 else ""
        lines.append(
            f"| {what}{count} | {target} | {precision} | {_counts(Counter(m['before'] for m in members))} | "
            f"{_counts(Counter(m['after'] for m in members))} | {r['max_abs']:.1e} | {r['relative']:.1e} | "
            f"{r['atol_applied']:.0e} |"
        )
    missing = {
        f"{r['target']} {r['precision']}: {r['unavailable']}" for r in evidence["rows"] if "unavailable" in r
    }
    return "\n".join([*lines, *(["", "Not measured here:", ""] if missing else []), *sorted(missing)]) + "\n"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))


if __name__ == "__main__":
    main()
