"""Eager CPU latency of the general graph merge against the hand-written merge and the kept layout.

    PYTHONPATH=. python scripts/graph_merge_latency.py --preset small --repeats 7
    PYTHONPATH=. python scripts/graph_merge_latency.py --library --repeats 5
    PYTHONPATH=. python scripts/graph_merge_latency.py --partial --threads 1 --repeats 5

Every module of one model is timed in the same process, in interleaved blocks (each block runs
one module for at least ``--block-seconds`` and keeps the block's median per-call time; the
order of the modules rotates every repeat), so slow drifts of a shared machine hit all of them
alike. Each ratio is reported as the median over the repeats of the per-repeat ratio, with the
lowest and highest per-repeat ratio beside it. ``--library`` times the two MONAI fixtures
(kept vs merged) on eager torch and on ONNX Runtime instead of ccnbench's variants. ``--partial``
times the two MONAI ResNet-10 trunks whose stems differ (``two_resnet10_stems``) kept and partly
merged in each form (folded once side by side in channels, once in the batch, around each merged
child) on eager torch, ONNX Runtime and OpenVINO, all twelve in one contest per batch size;
a ratio kept/form above 1 means the form is faster.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ccnbench.models import build_kept, merge, variant_specs
from ccnbench.models.graph_merge import merge_branches

Call = Callable[[], object]


def block_median(call: Call, seconds: float) -> float:
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6


def contest(calls: dict[str, Call], repeats: int, seconds: float) -> dict[str, list[float]]:
    """Per repeat, one block per module in a rotated order; returns each module's block medians."""
    names = list(calls)
    for name in names:  # warm-up: first calls allocate, pick kernels and fill caches
        block_median(calls[name], seconds / 2)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            samples[name].append(block_median(calls[name], seconds))
    return samples


def ratio_text(samples: dict[str, list[float]], num: str, den: str) -> str:
    ratios = sorted(a / b for a, b in zip(samples[num], samples[den]))
    return f"{statistics.median(ratios):.2f} [{ratios[0]:.2f}–{ratios[-1]:.2f}]"


def torch_call(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Call:
    def call() -> object:
        with torch.inference_mode():
            return module(*inputs)

    return call


def variants(args: argparse.Namespace) -> None:
    print(
        f"| model ({args.preset}) | kept ms | hand-merged ms | general ms | general/kept | hand/kept | general/hand |"
    )
    print("|---|---|---|---|---|---|---|")
    for spec in variant_specs(args.preset, args.branches):
        kept = build_kept(spec)
        g = torch.Generator().manual_seed(0)
        xs = tuple(torch.randn(1, *spec.input_shape, generator=g) for _ in range(spec.num_inputs))
        outcome = merge_branches(kept, xs)
        calls = {"kept": torch_call(kept, xs), "hand": torch_call(merge(kept), xs)}
        if outcome.merged:
            calls["general"] = torch_call(outcome.module, xs)
        s = contest(calls, args.repeats, args.block_seconds)
        med = {k: statistics.median(v) for k, v in s.items()}
        if outcome.merged:
            row = [f"{med['general']:.2f}", ratio_text(s, "general", "kept"), ratio_text(s, "hand", "kept")]
            row.append(ratio_text(s, "general", "hand"))
        else:
            row = ["— (nothing to merge)", "—", ratio_text(s, "hand", "kept"), "—"]
        print(f"| {spec.label} | {med['kept']:.2f} | {med['hand']:.2f} | " + " | ".join(row) + " |")


def library(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    from ccnbench.formats.onnx_export import export_module

    path = Path(__file__).parents[1] / "tests" / "fixtures" / "library_models.py"
    spec = importlib.util.spec_from_file_location("library_models", path)
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    shape = (1, 32, 32, 32)
    print("| model (input 1×32³, batch 1) | torch kept ms | torch merged ms | torch merged/kept | ort kept ms "
          "| ort merged ms | ort merged/kept |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in ("two_resnet10_trunks", "two_densenet_members"):
        kept = getattr(models, name)()
        g = torch.Generator().manual_seed(0)
        xs = tuple(torch.randn(1, *shape, generator=g) for _ in range(2))
        outcome = merge_branches(kept, xs)
        print(f"<!-- {name}: {outcome.description or outcome.reason} -->", file=sys.stderr)
        calls = {"kept": torch_call(kept, xs), "merged": torch_call(outcome.module, xs)}
        with tempfile.TemporaryDirectory() as tmp:
            for layout, module in (("kept", kept), ("merged", outcome.module)):
                artifact = export_module(module, ["input_0", "input_1"], shape, Path(tmp) / f"{layout}.onnx")
                options = ort.SessionOptions()
                options.intra_op_num_threads = torch.get_num_threads()
                session = ort.InferenceSession(
                    str(artifact.path), options, providers=["CPUExecutionProvider"]
                )
                feed = {f"input_{i}": x.numpy() for i, x in enumerate(xs)}
                calls[f"ort-{layout}"] = lambda session=session, feed=feed: session.run(None, feed)
            s = contest(calls, args.repeats, args.block_seconds)
        med = {k: statistics.median(v) for k, v in s.items()}
        print(f"| {name} | {med['kept']:.1f} | {med['merged']:.1f} | {ratio_text(s, 'merged', 'kept')} "
              f"| {med['ort-kept']:.1f} | {med['ort-merged']:.1f} | {ratio_text(s, 'ort-merged', 'ort-kept')} |")  # fmt: skip


def partial(args: argparse.Namespace) -> None:
    import onnxruntime as ort
    import openvino as ov

    from ccnbench.formats.onnx_export import export_module

    kept = _library_models().two_resnet10_stems()
    shape = (1, 32, 32, 32)
    g = torch.Generator().manual_seed(0)
    example = tuple(torch.randn(2, *shape, generator=g) for _ in range(2))
    modules = {"kept": kept}
    for fold, form in (("once", "channels"), ("batch", "batch"), ("per-child", "per-child")):
        outcome = merge_branches(kept, example, fold=fold)
        assert outcome.groups and outcome.groups[0].fold == form, outcome.reason
        modules[form] = outcome.module
    print(f"<!-- {outcome.description} -->", file=sys.stderr)
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": args.threads}
    forms = ("channels", "batch", "per-child")
    print("| runtime | batch | kept ms | " + " | ".join(f"{f} ms" for f in forms) + " | "
          + " | ".join(f"kept/{f}" for f in forms) + " |")  # fmt: skip
    print("|---|---|---|" + "---|" * (2 * len(forms)))
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            name: export_module(module, ["input_0", "input_1"], shape, Path(tmp) / f"{name}.onnx").path
            for name, module in modules.items()
        }
        for batch in args.batches:
            xs = tuple(torch.randn(batch, *shape, generator=g) for _ in range(2))
            feed = {f"input_{i}": x.numpy() for i, x in enumerate(xs)}
            calls: dict[str, Call] = {}
            for name, module in modules.items():
                calls[f"torch {name}"] = torch_call(module, xs)
                options = ort.SessionOptions()
                options.intra_op_num_threads = args.threads
                session = ort.InferenceSession(str(files[name]), options, providers=["CPUExecutionProvider"])
                calls[f"ort {name}"] = lambda s=session, f=feed: s.run(None, f)
                model = core.read_model(str(files[name]))
                request = core.compile_model(model, "CPU", config).create_infer_request()
                calls[f"openvino {name}"] = lambda r=request, f=feed: r.infer(f)
            s = contest(calls, args.repeats, args.block_seconds)
            med = {k: statistics.median(v) for k, v in s.items()}
            for runtime in ("torch", "ort", "openvino"):
                k = f"{runtime} kept"
                times = " | ".join(f"{med[f'{runtime} {f}']:.1f}" for f in forms)
                ratios = " | ".join(ratio_text(s, k, f"{runtime} {f}") for f in forms)
                print(f"| {runtime} | {batch} | {med[k]:.1f} | {times} | {ratios} |", flush=True)


def _library_models() -> Any:
    path = Path(__file__).parents[1] / "tests" / "fixtures" / "library_models.py"
    spec = importlib.util.spec_from_file_location("library_models", path)
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--branches", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--block-seconds", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="with --partial")
    parser.add_argument(
        "--library", action="store_true", help="time the MONAI fixtures instead of the variants"
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help="time the MONAI pair with different stems, partly merged two ways",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} repeats of "
          f"{args.block_seconds} s blocks; ratio = median [min–max] over repeats")  # fmt: skip
    if args.partial:
        partial(args)
    else:
        library(args) if args.library else variants(args)


if __name__ == "__main__":
    main()
