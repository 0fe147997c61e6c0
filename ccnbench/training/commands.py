"""CLI commands of the training features: ``shapes``, ``train-check``, ``train-bench``, ``checkpoint``, ``unmerge``.

``register(app)`` adds them to a Typer app; the commands parse options and call the library.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ccnbench.errors import UsageError
from ccnbench.run import selection

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

Preset = Annotated[str, typer.Option("--preset", "-p", help="Size preset: tiny, small, medium.")]
Branches = Annotated[
    int | None, typer.Option("--branches", "-n", help="Number of branches N (default: the preset's).")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
InputMode = Annotated[str, typer.Option("--input-mode", help="separate (one input per branch) or shared.")]
VariantList = Annotated[str, typer.Option("--variant", "-v", help="A variant, a comma list, or all.")]
OneVariant = Annotated[
    str, typer.Option("--variant", "-v", help="The variant the weights belong to (required).")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the weights and inputs.")]


def _variants(text: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The --variant list (selection's rule); ``all`` means ``default`` where a command has one."""
    from ccnbench.models.spec import VARIANTS

    chosen = selection.choices(text, VARIANTS, "variant")
    return default if default and text.strip() == "all" else chosen


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def shapes(
    variant: VariantList = "all",
    preset: Preset = "small",
    branches: Branches = None,
    input_mode: InputMode = "separate",
    volume: Annotated[
        str | None, typer.Option("--volume", help="Override the preset's volume: 20 or 20x24x24.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Your nn.Module factory: package.module:function or file.py:function."),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option("--input-shape", help="With --model: one input's shape without batch, e.g. 1x24x24x24."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Trace each layer's output shape, the size each classifier receives, parameters and FLOPs."""
    from ccnbench.training import shapes as trace

    if model is not None:
        traces = [_trace_user_model(model, input_shape, branches)]
    else:
        if input_shape is not None:
            raise UsageError(
                "--input-shape goes with --model; the variants take their volume from --preset/--volume"
            )
        size = selection.volume(volume)
        traces = [trace.trace_variant(preset, v, branches, size, input_mode) for v in _variants(variant)]
    if json_output:
        _print_json([t.to_dict() for t in traces])
        return
    for t in traces:
        _print_trace(t)


def _trace_user_model(model: str, input_shape: str | None, branches: int | None) -> Any:
    from ccnbench.run.selection import input_shape as parse_shape
    from ccnbench.source import FactorySource
    from ccnbench.source.factory_loading import load_factory
    from ccnbench.training.shapes import trace_module

    shape = parse_shape(input_shape)
    if shape is None:
        raise UsageError("--model needs --input-shape (one input's shape without batch, e.g. 1x24x24x24)")
    # Not FactorySource.module(): it runs the module first, and a shape that does not fit must be
    # reported by the trace, naming the layer, not as a raw PyTorch error.
    label = FactorySource(model, shape, branches or 1).label
    return trace_module(load_factory(model)(), shape, branches or 1, label)


def _print_trace(t: Any) -> None:
    table = Table(title=f"{t.label}: input {t.input_shape[0]} × {'x'.join(map(str, t.input_shape[1:]))}")
    for col in ("layer", "kind", "output (C, D, H, W)"):
        table.add_column(col, no_wrap=True)
    for layer in t.layers:
        table.add_row(layer.name, layer.kind, " × ".join(map(str, layer.shape)))
    console.print(table)
    for note in t.notes:
        console.print(f"  {note}")
    for head, size in t.classifier_in.items():
        console.print(f"  {head} receives {size:,} features")
    merged = f", merged {t.params_merged:,}" if t.params_merged is not None else ""
    flops = f", {t.flops_per_sample / 1e6:,.1f} MFLOP/sample" if t.flops_per_sample is not None else ""
    console.print(f"  parameters {t.params:,}{merged}{flops}")


def train_check(
    variant: VariantList = "all",
    preset: Preset = "tiny",
    branches: Branches = None,
    input_mode: InputMode = "separate",
    batch: Annotated[int, typer.Option("--batch", "-b", help="Batch size of the step.")] = 4,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd or adam.")] = "sgd",
    form: Annotated[
        str,
        typer.Option(
            "--form", help="training (the training-equivalent form) or deployment (the exported merge)."
        ),
    ] = "training",
    json_output: JsonFlag = False,
) -> None:
    """One float64 optimisation step, kept vs merged: the largest parameter/statistic difference, unmerged."""
    from ccnbench.models.spec import spec_from_preset
    from ccnbench.training.step import check_step

    rows = []
    for v in _variants(variant):
        spec = spec_from_preset(preset, v, branches=branches, input_mode=input_mode)
        for mode in ("fused", "members") if v == "decision" and form == "training" else ("fused",):
            rows.append(check_step(spec, batch, optimizer, mode, form_name=form))
    if json_output:
        _print_json([r.to_dict() for r in rows])
    else:
        table = Table(title=f"one {optimizer} step in float64, kept vs {form} form (unmerged)")
        for col in ("variant", "form", "loss", "max |Δ|", "worst tensor", "Δ / tolerance", "agrees"):
            table.add_column(col, no_wrap=True)
        for r in rows:
            table.add_row(r.label, r.form, r.loss_mode, f"{r.max_abs_difference:.2e}", r.worst_tensor,
                          f"{r.worst_ratio:.1e}", "yes" if r.agrees else "NO")  # fmt: skip
        console.print(table)
    if form == "training" and not all(r.agrees for r in rows):
        raise typer.Exit(1)


def train_bench(
    variant: VariantList = "all",
    preset: Preset = "small",
    branches: Branches = None,
    batch: Annotated[str, typer.Option("--batch", "-b", help="Batch sizes, comma list.")] = "8,32",
    target: Annotated[
        str,
        typer.Option(
            "--target", "-t", help="Comma list of torch:cpu, compile:cpu, torch:cuda, compile:cuda."
        ),
    ] = "torch:cpu,compile:cpu",
    processes: Annotated[int, typer.Option("--processes", help="Fresh processes (intervals need >= 2).")] = 3,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds", help="Least rounds per contest and process (default: the training protocol's)."
        ),
    ] = None,
    contest_seconds: Annotated[
        float | None,
        typer.Option(
            "--contest-seconds",
            help="Timing budget per contest and process (default: the training protocol's).",
        ),
    ] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd or adam.")] = "sgd",
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch intra-op threads (default: torch's).")
    ] = None,
    json_output: JsonFlag = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Also write the results, the config and the machine to this JSON file."
        ),
    ] = None,
) -> None:
    """Time one optimisation step (forward, loss, backward, optimizer step) of each form, kept vs merged."""
    from ccnbench.training.bench import DEFAULT_VARIANTS, PROTOCOL, BenchConfig, write_results

    if out is not None and out.is_dir():  # said now, not after minutes of measuring
        raise UsageError(f"--out {out} is a directory: name the JSON file to write")

    given = {"min_rounds": rounds, "contest_seconds": contest_seconds}
    protocol = replace(PROTOCOL, **{k: v for k, v in given.items() if v is not None})
    config = BenchConfig(
        preset=preset, variants=_variants(variant, DEFAULT_VARIANTS), batches=selection.integers(batch, "--batch"),
        targets=tuple(t.strip() for t in target.split(",")), processes=processes, protocol=protocol,
        optimizer=optimizer, branches=branches, threads=threads,
    )  # fmt: skip
    results = _run_with_progress(config)
    if json_output:
        _print_json([r.to_dict() for r in results])
    else:
        _print_bench(results, f"training step, preset {preset!r}, {processes} processes")
    if out is not None:  # after printing: a file that cannot be written loses no figures
        write_results(out, config, results)
        err_console.print(f"results: {out}")


def _run_with_progress(config: Any) -> Any:
    """``bench.run`` under a progress bar over its contests (processes × variants × targets), with a
    line per process for logs, where the bar does not show."""
    from ccnbench.progress import bar
    from ccnbench.training.bench import run

    start = time.perf_counter()
    begun: set[int] = set()
    with bar(err_console) as shown:
        task = shown.add_task("starting", total=config.processes * len(config.variants) * len(config.targets))

        def on_contest(process: int, what: str, done: bool) -> None:
            if done:
                shown.advance(task)
                return
            if process not in begun:
                begun.add(process)
                shown.console.print(
                    f"process {process + 1}/{config.processes} ({time.perf_counter() - start:.0f} s so far)"
                )
            # The first process of a run compiles every graph unless Inductor's cache has them.
            building = " (compiling: minutes when cold)" if process == 0 and "compile" in what else ""
            shown.update(task, description=f"process {process + 1}/{config.processes}: {what}{building}")

        results = run(config, on_contest=on_contest)
    # A member's build and warm-up is recorded once per batch size: count it once. On compile
    # targets it is Inductor compiling (minutes when its cache is cold), not the benchmark.
    built = {(r.label, r.target, r.member): r.build_seconds[0] for r in results if r.build_seconds}
    compiling = sum(s for (_, target, _), s in built.items() if target.startswith("compile"))
    note = f" ({compiling:.0f} s of it building and warming compiled forms in process 1)" if compiling else ""
    err_console.print(f"training benchmark: {time.perf_counter() - start:.0f} s{note}")
    return results


def _print_bench(results: Any, title: str) -> None:
    from ccnbench.answers import stats

    table = Table(title=title)
    for col in ("variant", "target", "batch", "form", "median ms [95 %]", "vs kept [95 %]", "verdict"):
        table.add_column(col, no_wrap=True)
    for r in results:
        median = r.median_interval()
        table.add_row(
            r.label, r.target, str(r.batch), r.member,
            median.format(1, " ms") if median else (r.note or "-"),
            r.ratio.format() if r.ratio else "", stats.verdict(r.ratio) if r.partner else "",
        )  # fmt: skip
    console.print(table)


def checkpoint(
    weights: Annotated[
        Path, typer.Argument(help="A kept-layout state_dict (torch.save(model.state_dict())).")
    ],
    variant: OneVariant,
    preset: Preset = "small",
    branches: Branches = None,
    input_mode: InputMode = "separate",
    seed: Seed = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the exported files go.")] = Path(
        "artifacts"
    ),
    file_format: Annotated[
        str, typer.Option("--format", help="onnx, pt2, a comma list, or none.")
    ] = "onnx,pt2",
    save_merged: Annotated[
        Path | None, typer.Option("--save-merged", help="Also write the merged state_dict here.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Load a trained kept checkpoint, merge it, export the merged module and check it against the kept one."""
    import torch

    from ccnbench.models import merge
    from ccnbench.models.spec import spec_from_preset
    from ccnbench.training.checkpoint import FORMATS, check_checkpoint, load_kept

    spec = spec_from_preset(preset, variant, branches=branches, input_mode=input_mode, seed=seed)
    formats = () if file_format == "none" else tuple(f.strip() for f in file_format.split(","))
    for f in formats:
        if f not in FORMATS:
            raise UsageError(f"--format {f!r}: choose from {', '.join(FORMATS)} or none")
    report = check_checkpoint(weights, spec, out if formats else None, formats)
    if save_merged is not None:
        torch.save(merge(load_kept(weights, spec)).state_dict(), save_merged)
    if json_output:
        _print_json(report.to_dict())
    else:
        console.print(
            f"{report.label}: merged vs kept (float64), relative max |Δ| {report.merged_difference:.1e}"
        )
        if report.roundtrip_difference is not None:
            console.print(
                f"  merged weights -> kept state_dict -> outputs: relative max |Δ| {report.roundtrip_difference:.1e}"
            )
        else:
            console.print(
                "  the merge is not invertible (folded decision head): no way back to a kept state_dict"
            )
        for f in report.files:
            verdict = "FAIL" if not f.agreement.passed else "vacuous" if f.agreement.vacuous else "pass"
            console.print(
                f"  {f.format} {f.path}: {verdict}, max |Δ| {f.agreement.max_abs:.1e} vs float64 kept"
            )
    if not report.passed:
        raise typer.Exit(1)


def unmerge(
    merged_weights: Annotated[Path, typer.Argument(help="A merged state_dict (checkpoint --save-merged).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the kept state_dict is written.")],
    variant: OneVariant,
    preset: Preset = "small",
    branches: Branches = None,
    input_mode: InputMode = "separate",
) -> None:
    """Convert merged weights back to a kept-layout state_dict (where the merge is invertible)."""
    import torch

    from ccnbench.models.spec import spec_from_preset
    from ccnbench.training.checkpoint import unmerge_file

    spec = spec_from_preset(preset, variant, branches=branches, input_mode=input_mode)
    try:
        state = torch.load(merged_weights, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise UsageError(f"{merged_weights}: no such file") from exc
    if not isinstance(state, dict):
        raise UsageError(f"{merged_weights}: holds a {type(state).__name__}, not a state_dict")
    torch.save(unmerge_file(state, spec), out)
    console.print(f"{spec.label}: kept state_dict written to {out}")


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app``."""
    app.command("shapes")(shapes)
    app.command("train-check")(train_check)
    app.command("train-bench")(train_bench)
    app.command("checkpoint")(checkpoint)
    app.command("unmerge")(unmerge)
