"""Evidence for int8 grading: how far correct int8 files and real quantization bugs land.

Regenerates results/int8-evidence/evidence.json and README.md. Every variant of the preset
(N branches, seed 0), graded against the float64 oracle of the kept model on the evaluation set
(``int8_grading.EVAL_SAMPLES`` seeded samples, their own random stream; calibration on 32 others):

- correct: the int8-u8 and int8-s8 QDQ files of every variant, kept and merged, run on ONNX
  Runtime (CPU) and OpenVINO (CPU, f32 hint for the rest), as ccnbench makes them;
- bugs: the int8 faults of ``ccnbench.models.int8_faults`` (constant calibration, a wrong scale,
  a branch given another branch's scales, per-tensor weights), in both layouts where they exist,
  and the export faults of ``ccnbench.models.faults`` (kept; ``scale_layer`` on the first and last
  weight layer) quantized correctly; all run on ONNX Runtime.

Per output: top-1 agreement, 1 - cosine, relative RMS error and max |error|; per case whether
ccnbench's int8 rule (``agreement.compare`` with the int8 defaults) passes it. The summary gives
each measure's worst correct and mildest bug, which bugs each measure alone would let through,
and the merged-vs-kept agreement cost per variant.

Usage: PYTHONPATH=. python scripts/int8_evidence.py [--out DIR] [--preset small] [--branches 3]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccnbench import environment
from ccnbench.formats.int8 import INT8_PRECISIONS, calibration_inputs, recipe_for, write_int8
from ccnbench.formats.onnx_export import export, export_module
from ccnbench.measure import int8_grading
from ccnbench.measure.agreement import TolerancePolicy, compare
from ccnbench.models import build_kept
from ccnbench.models.faults import fault_names, inject, weight_layers
from ccnbench.models.int8_faults import int8_faults
from ccnbench.run import selection
from ccnbench.source import ModelSource

RUNTIMES = ("ort:cpu", "openvino:cpu")


def run_file(
    path: Path, runtime: str, inputs: tuple[torch.Tensor, ...], names: tuple[str, ...]
) -> tuple[torch.Tensor, ...]:
    """The file's outputs for every evaluation sample, 8 at a time, one thread."""
    feeds = [x.numpy() for x in inputs]
    if runtime == "ort:cpu":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        call = lambda part: session.run(None, dict(zip(names, part)))  # noqa: E731
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(
            str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
        )
        call = lambda part: [compiled(list(part))[o] for o in compiled.outputs]  # noqa: E731
    chunks = [call([f[i : i + 8] for f in feeds]) for i in range(0, len(feeds[0]), 8)]
    return tuple(
        torch.from_numpy(np.concatenate([np.asarray(c[k]) for c in chunks])) for k in range(len(chunks[0]))
    )


def measure(
    outputs: tuple[torch.Tensor, ...],
    expected: tuple[torch.Tensor, ...],
    names: tuple[str, ...],
    precision: str,
) -> dict[str, Any]:
    agreement = compare(outputs, expected, names, TolerancePolicy(precision))
    return {
        "passes_default": agreement.passed,
        "outputs": {
            o.name: {
                "top1": o.top1,
                "one_minus_cosine": 1.0 - o.cosine,
                "rel_rms": o.rel_rms,
                "max_abs": o.max_abs,
            }
            for o in agreement.outputs
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("results/int8-evidence"))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--branches", type=int, default=3)
    parser.add_argument("--variants", default="all")
    parser.add_argument(
        "--summarize", action="store_true", help="Only summarize the evidence.json in --out again."
    )
    args = parser.parse_args()
    if args.summarize:
        data = json.loads((args.out / "evidence.json").read_text())
        data["summary"] = summarize(data["correct"], data["bugs"])
        write(args.out, data)
        return
    torch.set_num_threads(1)
    start = time.time()
    correct: list[dict[str, Any]] = []
    bugs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="int8-evidence-") as tmp_dir:
        tmp = Path(tmp_dir)
        for spec in selection.specs(args.preset, args.variants, args.branches, "separate", 0):
            source = ModelSource.from_spec(spec, "kept")
            inputs, expected = int8_grading.evaluation_set(source)
            names, outs = spec.input_names, spec.output_names
            kept = build_kept(spec)
            for precision in INT8_PRECISIONS:
                recipe = recipe_for(precision)
                feeds = calibration_inputs(recipe, names, spec.input_shape)
                for layout in ("kept", "merged"):
                    fp32 = export(spec, layout, "fp32", out_dir=tmp)
                    good = write_int8(fp32, recipe, feeds, spec=spec)
                    for runtime in RUNTIMES:
                        row = {"model": spec.label, "layout": layout, "precision": precision, "runtime": runtime,
                               "size_bytes": good.size_bytes, "fp32_size_bytes": fp32.size_bytes}  # fmt: skip
                        correct.append(
                            row
                            | measure(run_file(good.path, runtime, inputs, names), expected, outs, precision)
                        )
                        print(
                            "correct",
                            row["model"],
                            layout,
                            precision,
                            runtime,
                            correct[-1]["outputs"],
                            flush=True,
                        )
                    for fault in int8_faults(layout, spec.num_inputs):
                        path = tmp / f"{spec.label}-{layout}-{precision}-{fault.name}.onnx"
                        bad = write_int8(
                            fp32,
                            fault.recipe(recipe),
                            fault.feeds(feeds),
                            edit=fault.edit,
                            path=path,
                            force=True,
                        )
                        row = {"model": spec.label, "layout": layout, "precision": precision, "runtime": "ort:cpu",
                               "fault": fault.name, "kind": "int8"}  # fmt: skip
                        bugs.append(
                            row
                            | measure(run_file(bad.path, "ort:cpu", inputs, names), expected, outs, precision)
                        )
                        print(
                            "bug", spec.label, layout, precision, fault.name, bugs[-1]["outputs"], flush=True
                        )
                layers = weight_layers(kept)
                chosen = [f for f in fault_names(kept) if not f.startswith("scale_layer:")]
                chosen += [f"scale_layer:{layers[0]}", f"scale_layer:{layers[-1]}"]
                for fault in chosen:
                    module = inject(kept, fault)
                    path = tmp / f"{spec.label}-kept-fp32-{fault.replace(':', '_')}.onnx"
                    fp32_bad = export_module(module, names, spec.input_shape, path, outs, force=True)
                    bad = write_int8(
                        fp32_bad,
                        recipe,
                        feeds,
                        path=path.with_name(path.stem + f"-{precision}.onnx"),
                        force=True,
                    )
                    row = {"model": spec.label, "layout": "kept", "precision": precision, "runtime": "ort:cpu",
                           "fault": fault, "kind": "export"}  # fmt: skip
                    bugs.append(
                        row | measure(run_file(bad.path, "ort:cpu", inputs, names), expected, outs, precision)
                    )
                    print("bug", spec.label, precision, fault, bugs[-1]["outputs"], flush=True)
    summary = summarize(correct, bugs)
    data = {
        "machine": {
            "cpu": environment.describe().get("cpu", platform.processor()),
            "python": platform.python_version(),
        },
        "preset": args.preset,
        "branches": args.branches,
        "evaluation_samples": int8_grading.EVAL_SAMPLES,
        "seconds": round(time.time() - start, 1),
        "summary": summary,
        "correct": correct,
        "bugs": bugs,
    }
    write(args.out, data)


def write(out: Path, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "evidence.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (out / "README.md").write_text(readme(data))
    print(json.dumps(data["summary"], indent=1, default=str))


def _fmt(o: dict[str, Any]) -> str:
    top1 = "-" if o["top1"] is None else f"{o['top1']:.3f}"
    return f"{top1} | {o['one_minus_cosine']:.1e} | {o['rel_rms']:.3f}"


def readme(data: dict[str, Any]) -> str:
    """The evidence as tables: correct files, bugs (caught or not by the bounds), bounds, merged vs kept."""
    lines = [
        "# int8 grading from evidence",
        "",
        f"Machine: {data['machine']['cpu']}. Preset {data['preset']}, N = {data['branches']}, seed 0; "
        f"{data['evaluation_samples']} evaluation samples, 32 calibration samples (seeded, separate streams). "
        f"{data['seconds']:.0f} s. Regenerate: `PYTHONPATH=. python scripts/int8_evidence.py` "
        "(`--summarize` recomputes the tables and the verdicts of the current bounds from evidence.json).",
        "",
        "Per output: top-1 agreement, 1 - cosine, relative RMS error against the float64 oracle. "
        "`pass` is ccnbench's int8 rule with the bounds of `int8_grading.BOUNDS`.",
        "",
        "## Correct files",
        "",
        "| model | layout | precision | runtime | output | top-1 | 1 - cos | rel RMS | pass | size (fp32) |",
        "|---|---|---|---|---|---:|---:|---:|---|---:|",
    ]
    for r in data["correct"]:
        for name, o in r["outputs"].items():
            size = f"{r['size_bytes'] / 2**20:.2f} MiB ({r['fp32_size_bytes'] / 2**20:.2f})"
            lines.append(f"| {r['model']} | {r['layout']} | {r['precision']} | {r['runtime']} | {name} | {_fmt(o)} | "
                         f"{'yes' if passes(r) else 'NO'} | {size} |")  # fmt: skip
    lines += ["", "## Bugs (ONNX Runtime)", "",
              "| model | layout | precision | fault | output | top-1 | 1 - cos | rel RMS | caught |",
              "|---|---|---|---|---|---:|---:|---:|---|"]  # fmt: skip
    for r in data["bugs"]:
        for name, o in r["outputs"].items():
            lines.append(f"| {r['model']} | {r['layout']} | {r['precision']} | {r['fault']} | {name} | {_fmt(o)} | "
                         f"{'no' if passes(r) else 'yes'} |")  # fmt: skip
    summary = data["summary"]
    lines += ["", "## Bounds from the two sides", "",
              "| precision | measure (as an error) | worst correct | mildest bug beyond 1.2x | bound | bugs beyond |",
              "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for precision in INT8_PRECISIONS:
        for m, b in summary[f"thresholds {precision}"]["bounds"].items():
            mild = "-" if b["mildest_bug_beyond"] is None else f"{b['mildest_bug_beyond']:.3g}"
            lines.append(f"| {precision} | {m} | {b['worst_correct']:.3g} | {mild} | {b['bound']} | "
                         f"{b['bugs_beyond']} of {b['bugs']} |")  # fmt: skip
    rule = summary["default_rule"]
    lines += ["", f"Bounds in use: {json.dumps(rule['bounds'])}.",
              f"Correct files failing: {len(rule['correct_failing'])} ({', '.join(rule['correct_failing']) or 'none'}).",
              f"Bugs passing: {len(rule['bugs_passing'])} of {len(data['bugs'])}.", "",
              "## Merged vs kept (largest relative RMS error of the case)", "",
              "| model, precision, runtime | kept | merged |", "|---|---:|---:|"]  # fmt: skip
    for key, v in summary["merged_vs_kept_rel_rms"].items():
        lines.append(f"| {key} | {v.get('kept', float('nan')):.3f} | {v.get('merged', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def _worst(rows: list[dict[str, Any]], measure_: str) -> list[float]:
    vals = []
    for r in rows:
        for o in r["outputs"].values():
            v = o[measure_]
            if v is not None:
                vals.append(float(v))
    return vals


def _case_value(row: dict[str, Any], measure_: str, worst: Any) -> float | None:
    vals = [float(o[measure_]) for o in row["outputs"].values() if o[measure_] is not None]
    return worst(vals) if vals else None


# A bug is told apart on a measure only beyond this factor of the worst correct file: closer, the
# next model or runtime's round-off would cover it.
HEADROOM = 1.2
# Each measure as an error (larger is worse): top-1 agreement as its shortfall.
ERRORS = {
    "rel_rms": lambda o: o["rel_rms"],
    "one_minus_cosine": lambda o: o["one_minus_cosine"],
    "top1_shortfall": lambda o: None if o["top1"] is None else 1.0 - o["top1"],
}


def _error(row: dict[str, Any], measure_: str) -> float | None:
    vals = [v for o in row["outputs"].values() if (v := ERRORS[measure_](o)) is not None]
    return max(vals) if vals else None


def thresholds(correct: list[dict[str, Any]], bugs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure, the bound between the worst correct file and the mildest bug beyond
    ``HEADROOM`` times it (their geometric mean, two significant digits), and the bugs no measure
    tells from a correct file.

    A bug at or below the worst correct file on every measure is within quantization noise: no
    bound on these measures can fail it without failing a correct file."""
    bounds: dict[str, Any] = {}
    for m in ERRORS:
        c = [v for r in correct if (v := _error(r, m)) is not None]
        b = [v for r in bugs if (v := _error(r, m)) is not None]
        if not c or not b:
            continue
        worst = max(c)
        beyond = [v for v in b if v > HEADROOM * worst]
        bound = float(f"{math.sqrt(max(worst, 1e-12) * min(beyond)):.1e}") if beyond else None
        bounds[m] = {"worst_correct": worst, "mildest_bug_beyond": min(beyond) if beyond else None, "bound": bound,
                     "bugs_beyond": len(beyond), "bugs": len(b)}  # fmt: skip
    noise = [
        f"{r['model']} {r['layout']} {r['fault']}"
        for r in bugs
        if all(
            (v := _error(r, m)) is None or bounds.get(m, {}).get("bound") is None or v <= bounds[m]["bound"]
            for m in bounds
        )
    ]
    return {"bounds": bounds, "within_noise": noise}


def passes(row: dict[str, Any]) -> bool:
    """Whether ccnbench's int8 bounds (``int8_grading.BOUNDS``) pass the row's every output."""
    top1, cosine, rel = int8_grading.BOUNDS[row["precision"]]
    return all(
        (o["top1"] is None or o["top1"] >= top1)
        and 1 - o["one_minus_cosine"] >= cosine
        and o["rel_rms"] <= rel
        for o in row["outputs"].values()
    )


def summarize(correct: list[dict[str, Any]], bugs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each measure's worst correct case and mildest bug, the bugs within the worst correct case,
    the thresholds per activation type, whether the defaults separate, and merged-vs-kept cost."""
    out: dict[str, Any] = {}
    for name, worst, better in (
        ("rel_rms", max, "lower"),
        ("one_minus_cosine", max, "lower"),
        ("top1", min, "higher"),
    ):
        c = [v for r in correct if (v := _case_value(r, name, worst)) is not None]
        b = [(v, r) for r in bugs if (v := _case_value(r, name, worst)) is not None]
        worst_correct = worst(c)
        inside = [f"{r['model']} {r['layout']} {r['precision']} {r['fault']}" for v, r in b
                  if (v <= worst_correct if better == "lower" else v >= worst_correct)]  # fmt: skip
        out[name] = {
            "worst_correct": worst_correct,
            "mildest_bug": (min if better == "lower" else max)(v for v, _ in b),
            "bugs_within_correct": len(inside),
            "bugs": len(b),
            "within": inside,
        }
    out["default_rule"] = {
        "bounds": {
            p: dict(zip(("min_top1", "min_cosine", "max_rel_rms"), b)) for p, b in int8_grading.BOUNDS.items()
        },
        "correct_failing": [
            f"{r['model']} {r['layout']} {r['precision']} {r['runtime']}" for r in correct if not passes(r)
        ],
        "bugs_passing": [
            f"{r['model']} {r['layout']} {r['precision']} {r['fault']}" for r in bugs if passes(r)
        ],
    }
    for precision in INT8_PRECISIONS:
        out[f"thresholds {precision}"] = thresholds(
            [r for r in correct if r["precision"] == precision],
            [r for r in bugs if r["precision"] == precision],
        )
    cost: dict[str, Any] = {}
    for r in correct:
        key = f"{r['model']} {r['precision']} {r['runtime']}"
        cost.setdefault(key, {})[r["layout"]] = _case_value(r, "rel_rms", max)
    out["merged_vs_kept_rel_rms"] = cost
    return out


if __name__ == "__main__":
    main()
