"""Evidence for the agreement tolerances: how far correct exports and real export bugs land.

Regenerates results/fp16-evidence/evidence.json and README.md. Two sides, for every variant of
the given presets (batch 4, seed 0), each output measured against the float64 oracle:

- correct: kept and merged, prepared by the backends exactly as a sweep prepares them: torch:cpu
  in fp32 and fp16; ort:cpu on the fp16 ONNX file and openvino:cpu with its inference precision
  pinned to f16 (skipped, with the reason, on a CPU without an f16 path), for the presets in
  ``--onnx-presets`` (an ONNX export costs seconds); plus the correct cases of the H200 run stored
  beside the results (h200-2026-11-30.json, where max abs error stands in for t, an upper bound);
- bugs: every fault of ``ccnbench.models.faults`` injected into the kept model and run by
  PyTorch on the CPU in fp32 and in fp16. A fault that leaves the fp32 outputs within fp32
  round-off (two identical members swapped) is listed as harmless and need not fail.

Per output: t, the smallest atol = rtol that passes (``agreement.equal_tolerance``), 1 - cosine,
top-1 agreement, and whether ccnbench's check (``agreement.compare`` with the precision's
defaults) passes it. The summary says whether the defaults pass every correct case and fail
every bug. About two minutes of CPU time (121 s measured: 498 s of wall time on two cores
shared with five other jobs).

Usage: PYTHONPATH=. python scripts/fp16_evidence.py [--out DIR] [--presets tiny,small] [--onnx-presets small]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ccnbench import environment
from ccnbench.backends import Target, backend_of
from ccnbench.errors import CcnbenchError
from ccnbench.measure.agreement import (
    DEFAULT_TOLERANCES,
    TolerancePolicy,
    compare,
    equal_tolerance,
    tolerance_from_evidence,
)
from ccnbench.measure.timing import stage
from ccnbench.models import build_kept, variant_specs
from ccnbench.models.cast import CastIO
from ccnbench.models.faults import fault_names, inject
from ccnbench.run import plan
from ccnbench.run.plan import unavailable_reason
from ccnbench.source import ModelSource

PRECISIONS = ("fp32", "fp16")
# What runs each precision on the CPU: ONNX Runtime and OpenVINO only for fp16, the question here.
TARGETS = {"torch:cpu": PRECISIONS, "ort:cpu": ("fp16",), "openvino:cpu": ("fp16",)}
ONNX_TARGETS = ("ort:cpu", "openvino:cpu")
BATCH = 4
HARMLESS = 1e-5  # t of a fault in fp32 below this is round-off: the fault changed nothing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/fp16-evidence"))
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--onnx-presets", default="small", help="presets also run by ort and openvino")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started, cpu = time.monotonic(), time.process_time()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ccnbench-evidence-") as artifacts:
        for preset in args.presets.split(","):
            targets = [t for t in TARGETS if preset in args.onnx_presets.split(",") or t not in ONNX_TARGETS]
            for spec in variant_specs(preset):
                rows += correct_rows(spec, targets, Path(artifacts))
                rows += bug_rows(spec)
                print(f"{spec.label}: {time.monotonic() - started:.0f} s", flush=True)
    rows += gpu_rows(args.out / "h200-2026-11-30.json")
    evidence = {
        "machine": machine(),
        "command": f"PYTHONPATH=. python scripts/fp16_evidence.py --presets {args.presets} "
        f"--onnx-presets {args.onnx_presets}",
        "seconds": round(time.monotonic() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "batch": BATCH,
        "tolerances": {p: vars(DEFAULT_TOLERANCES[p]) for p in PRECISIONS},
        "summary": {p: summarise(rows, p) for p in PRECISIONS},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evidence.json").write_text(json.dumps(evidence, indent=1) + "\n")
    (args.out / "README.md").write_text(markdown(evidence))
    print(markdown(evidence))


_NO_PATH: dict[tuple[str, str], str] = {}  # (target, precision) this CPU cannot run, and why


def correct_rows(spec: Any, targets: list[str], artifacts: Path) -> list[dict[str, Any]]:
    inputs = ModelSource.from_spec(spec).make_inputs(BATCH, 0)
    expected = ModelSource.from_spec(spec).oracle(inputs)
    rows = []
    for layout in ("kept", "merged"):
        source = ModelSource.from_spec(spec, layout)
        for text in targets:
            for precision in TARGETS[text]:
                base = {"side": "correct", "model": spec.label, "layout": layout, "target": text}
                base |= {"precision": precision, "fault": None}
                outputs, reason = run_target(source, text, precision, inputs, artifacts)
                if outputs is None:
                    rows.append(base | {"unavailable": reason})
                else:
                    rows += output_rows(base, outputs, expected, source.output_names)
    return rows


def run_target(
    source: ModelSource, text: str, precision: str, inputs: tuple[torch.Tensor, ...], artifacts: Path
) -> tuple[Any, str]:
    """``source``'s outputs on target ``text`` in ``precision``, prepared by its backend exactly as a
    sweep prepares it, or (None, why it cannot run here)."""
    target = Target.parse(text)
    batch = inputs[0].shape[0]
    (group,) = plan.case_groups([source], [target], [precision], [batch], artifacts, threads=2)
    reason = unavailable_reason(group) or _NO_PATH.get((text, precision))
    if reason:
        return None, reason
    try:
        backend = backend_of(target)
        backend.artifact(source, target, group.options)
        runner = backend.prepare(source, target, group.options)
    except CcnbenchError as exc:  # a precision this CPU has no path for (OpenVINO fp16)
        _NO_PATH[(text, precision)] = reason = " ".join(str(exc).split())[:300]
        return None, reason
    with runner:
        return runner.infer(stage(inputs, runner)), ""


def bug_rows(spec: Any) -> list[dict[str, Any]]:
    source = ModelSource.from_spec(spec, "kept")
    inputs = source.make_inputs(BATCH, 0)
    expected = source.oracle(inputs)
    rows, effect = [], math.inf
    for fault, precision, outputs in faulty_outputs(build_kept(spec), inputs):
        base = {"side": "bug", "model": spec.label, "layout": "kept", "target": "torch:cpu"}
        if precision == "fp32":  # first: within its round-off the fault changed nothing
            effect = max(equal_tolerance(y, r) for y, r in zip(outputs, expected))
        base |= {"precision": precision, "fault": fault, "harmless": effect < HARMLESS}
        rows += output_rows(base, outputs, expected, source.output_names)
    return rows


def faulty_outputs(
    kept: Any, inputs: tuple[torch.Tensor, ...]
) -> Iterator[tuple[str, str, tuple[torch.Tensor, ...]]]:
    """Every fault of ``kept`` (a variant or any module) run by PyTorch on the CPU in each of
    ``PRECISIONS``, fp32 first: (fault, precision, outputs)."""
    for fault in fault_names(kept):
        broken = inject(kept, fault)
        for precision in PRECISIONS:
            module = copy.deepcopy(broken)
            module = module if precision == "fp32" else CastIO(module.half(), torch.float16)
            with torch.inference_mode():
                yield fault, precision, _as_tuple(module(*inputs))


def output_rows(
    base: dict[str, Any], outputs: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...], names: tuple
) -> list[dict[str, Any]]:
    agreement = compare(outputs, expected, names, TolerancePolicy(base["precision"]))
    return [
        base
        | {
            "output": o.name,
            "t": equal_tolerance(y, ref),
            "max_abs": o.max_abs,
            "one_minus_cos": 1.0 - o.cosine if math.isfinite(o.cosine) else math.inf,
            "top1": o.top1,
            "check_passes": o.passed,
            "case_passes": agreement.passed,
        }
        for o, y, ref in zip(agreement.outputs, outputs, expected)
    ]


def gpu_rows(path: Path) -> list[dict[str, Any]]:
    """The H200's correct cases: t is at most max abs error (t = max |d| / (1 + |ref|))."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    rows = []
    for r in data["outputs"]:
        tol = DEFAULT_TOLERANCES[r["precision"]]
        rows.append(
            {"side": "correct", "model": r["model"], "layout": r["layout"], "target": r["target"],
             "precision": r["precision"], "fault": None, "output": r["output"], "t": r["max_abs"],
             "max_abs": r["max_abs"], "one_minus_cos": 1.0 - r["cosine"], "top1": r["top1"],
             "check_passes": r["max_abs"] <= tol.atol, "case_passes": None, "machine": data["machine"]}
        )  # fmt: skip
    return rows


def summarise(rows: list[dict[str, Any]], precision: str) -> dict[str, Any]:
    measured = [r for r in rows if r["precision"] == precision and "t" in r]
    correct = [r for r in measured if r["side"] == "correct"]
    bugs = [r for r in measured if r["side"] == "bug" and not r["harmless"]]
    # A bug is caught when its case fails: any one of its outputs failing is enough.
    cases: dict[tuple, list[dict[str, Any]]] = {}
    for r in bugs:
        cases.setdefault((r["model"], r["fault"]), []).append(r)
    caught = {k: not all(r["check_passes"] for r in v) for k, v in cases.items()}
    bug_t = {k: max(r["t"] for r in v) for k, v in cases.items()}
    worst_correct = max(correct, key=lambda r: r["t"])
    least_bug = min(bug_t, key=bug_t.get)
    chosen, note = tolerance_from_evidence(
        [(r["t"], r["one_minus_cos"]) for r in correct],
        [(bug_t[k], max(r["one_minus_cos"] for r in v)) for k, v in cases.items()],
    )
    return {
        "rule": {**vars(chosen), "note": note},
        "default_is_rule": DEFAULT_TOLERANCES[precision] == chosen,
        "correct_outputs": len(correct),
        "bug_cases": len(cases),
        "harmless_bug_cases": len(
            {(r["model"], r["fault"]) for r in measured if r["side"] == "bug"} - set(cases)
        ),
        "correct_max_t": worst_correct["t"],
        "correct_max_t_where": _where(worst_correct),
        "correct_max_t_cpu": max((r["t"] for r in correct if "machine" not in r), default=None),
        "correct_max_one_minus_cos": max(r["one_minus_cos"] for r in correct),
        "bug_min_t": bug_t[least_bug],
        "bug_min_t_where": f"{least_bug[0]} {least_bug[1]}",
        "bug_min_one_minus_cos": min(max(r["one_minus_cos"] for r in v) for v in cases.values()),
        "separable": worst_correct["t"] < bug_t[least_bug],
        "correct_failing": [_where(r) for r in correct if not r["check_passes"]],
        "bugs_passing": [f"{m} {f}" for (m, f), ok in caught.items() if not ok],
    }


def _where(r: dict[str, Any]) -> str:
    return f"{r['model']} {r['layout']} {r['target']} {r['output']}"


def markdown(evidence: dict[str, Any]) -> str:
    lines = [
        "# Agreement tolerances from evidence",
        "",
        f"Machine: {evidence['machine']}. Batch {evidence['batch']}, seed 0. "
        f"Regenerate: `{evidence['command']}` ({evidence['seconds']:.0f} s here, "
        f"{evidence['cpu_seconds']:.0f} s of CPU; the machine was shared with other work).",
        "",
        "t is the smallest atol = rtol that passes an output (max |y - ref| / (1 + |ref|)); for the",
        "H200 rows it is their max abs error, an upper bound. A bug case is caught when any output fails.",
        "",
        "| precision | tolerance atol/rtol | correct outputs | max t correct (where) | bug cases | min t of a bug (which) | separable | correct failing | bugs passing |",
        "|---|---|---:|---|---:|---|---|---|---|",
    ]
    for p, s in evidence["summary"].items():
        tol = evidence["tolerances"][p]
        lines.append(
            f"| {p} | {tol['atol']:.0e} / {tol['rtol']:.0e} | {s['correct_outputs']} | {s['correct_max_t']:.2e} "
            f"({s['correct_max_t_where']}) | {s['bug_cases']} (+{s['harmless_bug_cases']} harmless) | "
            f"{s['bug_min_t']:.2e} ({s['bug_min_t_where']}) | {'yes' if s['separable'] else 'NO'} | "
            f"{len(s['correct_failing'])} | {len(s['bugs_passing'])} |"
        )
    lines += ["", "What the rule (`agreement.tolerance_from_evidence`) makes of it:", ""]
    for p, s in evidence["summary"].items():
        rule = s["rule"]
        cos = "" if rule["min_cosine"] is None else f", cosine >= {rule['min_cosine']:.7f}"
        same = "the default" if s["default_is_rule"] else "NOT the default"
        lines.append(f"- {p}: atol = rtol = {rule['atol']:.0e}{cos} ({same}); {rule['note']}")
    lines += ["", "Largest t of correct outputs per target and precision, smallest t per fault kind:", ""]
    lines += ["| side | what | precision | t | 1 - cosine |", "|---|---|---|---:|---:|"]
    rows = [r for r in evidence["rows"] if "t" in r]
    for side, field, pick in (("correct", "target", max), ("bug", "fault", min)):
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in rows:
            if r["side"] == side and not r.get("harmless"):
                name = r[field].split(":")[0]
                groups.setdefault((name, r["precision"]), []).append(r)
        for (name, p), members in sorted(groups.items()):
            if side == "bug":  # a case's most-moved output is the one the check sees
                by_case: dict[tuple, float] = {}
                for r in members:
                    key = (r["model"], r["fault"])
                    by_case[key] = max(by_case.get(key, 0.0), r["t"])
                t = min(by_case.values())
            else:
                t = pick(r["t"] for r in members)
            cos = pick(r["one_minus_cos"] for r in members)
            lines.append(f"| {side} | {name} | {p} | {t:.2e} | {cos:.1e} |")
    unavailable = sorted(
        {
            f"{r['target']} {r['precision']}: {r['unavailable']}"
            for r in evidence["rows"]
            if "unavailable" in r
        }
    )
    if unavailable:
        lines += ["", "Not measured here:", ""] + [f"- {u}" for u in unavailable]
    return "\n".join(lines) + "\n"


def machine() -> str:
    env = environment.collect()
    return f"{env.cpu} ({platform.machine()}), torch {torch.__version__}"


def _as_tuple(y: Any) -> tuple[torch.Tensor, ...]:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


if __name__ == "__main__":
    main()
