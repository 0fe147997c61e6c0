"""The `ccnbench` command line. Commands parse options and call the library; no logic lives here.

The options ``bench``, ``check`` and ``export`` share with sweep files come from one table
(``config.FLAGS``). About 500 lines: Typer needs each command's options spelled out in its
signature, one per line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from ccnbench import __version__
from ccnbench.errors import CcnbenchError
from ccnbench.run.config import BUNDLED_SWEEPS, DEFAULTS, FLAGS, MODEL_DEFAULTS
from ccnbench.training import commands as training_commands

try:  # typer >= 0.24 vendors click; older releases (the GPU machine's) depend on it
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException, UsageError

# Logs and pipes get wide tables instead of rich's 80-column default; a terminal keeps its width.
_PIPE_WIDTH = 160
console = Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPE_WIDTH)


class _OneLineErrors(TyperGroup):
    """Turn every error into one line on stderr and an exit code CI can gate on.

    ccnbench errors exit 1 (2 for usage errors such as an impossible spec), click's usage
    errors exit 2, and no traceback reaches the user. This sits in ``main`` so that the
    console script and Typer's CliRunner take the same path.
    """

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `ccnbench`: show the help
                console.print(exc.format_message(), markup=False, highlight=False)
            else:
                _error_line(exc.format_message())
            code = 2
        except CcnbenchError as exc:
            _error_line(str(exc))
            code = exc.exit_code
        except typer.Abort:
            _error_line("aborted")
            code = 130
        except ClickException as exc:
            _error_line(exc.format_message())
            code = exc.exit_code
        except Exception as exc:
            # A bug, or a library failing in a way we did not anticipate: still one line.
            if os.environ.get("CCNBENCH_DEBUG"):
                raise
            _error_line(f"unexpected {type(exc).__name__}: {exc} (set CCNBENCH_DEBUG=1 for the traceback)")
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def _error_line(message: str) -> None:
    # One line whatever the terminal width, so CI logs and grep see the whole message.
    first = " ".join(message.split())
    err_console.print(f"error: {first}", markup=False, highlight=False, soft_wrap=True)


app = typer.Typer(
    cls=_OneLineErrors,
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # locals would print whole tensors
    add_completion=False,
    help="Which deployment format should I ship for this multi-branch 3D CNN, and does it agree with PyTorch?",
)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"ccnbench {__version__}")
        raise typer.Exit()


Version = Annotated[bool | None, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")]  # fmt: skip


@app.callback()
def _root(version: Version = None) -> None:
    """ccnbench: build, export, check and benchmark multi-branch 3D CNNs."""


# --- shared options (defined once) ------------------------------------------------------------


def _flag(name: str, kind: Any = str | None) -> Any:
    """A sweep option (``bench``, ``check``, ``export``) as Typer reads it, from ccnbench.run.config.FLAGS."""
    flag = FLAGS[name]
    return Annotated[kind, typer.Option(name, *([flag.short] if flag.short else []), help=flag.help)]


# fmt: off
Variants, Layout, BranchList, Preset, InputMode = map(_flag, ("--variant", "--layout", "--branches", "--preset", "--input-mode"))
Targets, Precisions, Batches, UserModel, InputShape = map(_flag, ("--targets", "--precision", "--batch", "--model", "--input-shape"))
LoadInputs, LoadOutputs, ArtifactsDir = (_flag(n, Path | None) for n in ("--load-inputs", "--load-outputs", "--artifacts"))
EvalInputs = _flag("--eval-inputs", Path | None)
Seed, Opset, Threads = (_flag(n, int | None) for n in ("--seed", "--opset", "--threads"))
Atol, Rtol, Timeout = (_flag(n, float | None) for n in ("--atol", "--rtol", "--timeout"))
Quick, Transfers, DynamicBatch = (_flag(n, bool) for n in ("--quick", "--transfers", "--dynamic-batch"))
RunName, Shard, Isolation, MemoryFormat = map(_flag, ("--name", "--shard", "--isolation", "--memory-format"))
Merge = _flag("--merge")
OnnxFiles, PerOutputTol = _flag("--onnx", list[Path] | None), _flag("--tol", list[str] | None)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Branches = Annotated[int | None, typer.Option("--branches", "-n", help="Number of branches N (default: the preset's).")]
ExportVariants = Annotated[str | None, typer.Option("--variant", "-v", help="Variant(s): early, feature, model, decision, multitask, a comma list or all.")]
ExportPrecisions = Annotated[str, typer.Option("--precision", help="fp32, fp16, int8 (int8-u8 and int8-s8 QDQ files), a comma list or all (fp32, fp16).")]
Calibration = Annotated[Path | None, typer.Option("--calibration", help="int8: calibrate on this .npz (one array per input name, as --load-inputs reads); seeded inputs without it.")]
IoType = Annotated[str, typer.Option("--io", help="I/O type of fp16 graphs: fp32 (casts inside) or fp16.")]
ExportOut = Annotated[Path, typer.Option("--out", "-o", help="Directory for the .onnx files.")]
Force = Annotated[bool, typer.Option("--force", help="Export again even if an identical artifact exists.")]
EngineFlag = Annotated[bool, typer.Option("--engine", help="Also build a TensorRT engine and its layer listing beside each file.")]
EngineBatch = Annotated[str, typer.Option("--engine-batch", help="With --engine: batch sizes the engine's profile covers.")]
FileFormat = Annotated[str, typer.Option("--format", help="onnx (validated ONNX files) or pt2 (AOTInductor packages: no model code needed to run them).")]
Pt2Device = Annotated[str, typer.Option("--device", help="With --format pt2: cpu or cuda (the package is compiled for it).")]
SweepFile = Annotated[str | None, typer.Option("--config", "-c", help=f"Sweep file (TOML), or a bundled sweep's name: {', '.join(BUNDLED_SWEEPS)}.")]
RunOut = Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (default results/<time>-<name>).")]
Resume = Annotated[Path | None, typer.Option("--resume", help="Finish an interrupted run in this directory.")]
Budget = Annotated[float | None, typer.Option("--budget-minutes", help="Start no new group after this long; resume later.")]
WriteReport = Annotated[bool, typer.Option("--report/--no-report", help="Write report.md and plots at the end.")]
CompareFormats = Annotated[str | None, typer.Option("--compare", help="Two formats side by side: two layouts (kept,merged) or two targets (ort:cpu,openvino:cpu); rows sorted by the difference they explain.")]
ExplainRounds = Annotated[int, typer.Option("--rounds", help="Interleaved rounds timing each format with and without its profiler.")]
ExplainCalls = Annotated[int, typer.Option("--calls", help="Profiled calls whose per-layer medians make the table.")]
ExplainOut = Annotated[Path | None, typer.Option("--out", "-o", help="Also write the profiles and tables as JSON to this file.")]
RooflineFlag = Annotated[bool, typer.Option("--roofline/--no-roofline", help="Count each layer's FLOPs and bytes and read its time against this machine's measured roofs (measured once per machine and thread count, then cached).")]
TraceDir = Annotated[Path | None, typer.Option("--trace", help="Keep the runtimes' raw traces here (Chrome trace JSON for ONNX Runtime and PyTorch).")]
# fmt: on


def _sweep_flags(params: dict[str, Any]) -> dict[str, Any]:
    """A command's parameters as the flags ccnbench.run.config reads (flag -> value); others left out."""
    flags = {"--" + name.replace("_", "-"): value for name, value in params.items()}
    return {flag: value for flag, value in flags.items() if flag in FLAGS}


@app.command()
def variants(preset: Preset = "small", branches: Branches = None, json_output: JsonFlag = False) -> None:
    """List the fusion variants with their parameter count and FLOPs at a preset."""
    from ccnbench.models import describe_variants
    from ccnbench.models.spec import VARIANT_DESCRIPTIONS

    rows = describe_variants(preset, branches)
    if json_output:
        _print_json(rows)
        return
    table = Table(title=f"Fusion variants, preset {preset!r}")
    for col in ("variant", "inputs", "params", "merged params", "MFLOP/sample"):
        table.add_column(col, justify="left" if col in ("variant", "inputs") else "right", no_wrap=True)
    for r in rows:
        kept, merged, mflop = r["params_kept"], r["params_merged"], r["flops_per_sample"] / 1e6
        table.add_row(r["label"], r["inputs"], f"{kept:,}", f"{merged:,}", f"{mflop:,.1f}")
    console.print(table)
    for variant, description in VARIANT_DESCRIPTIONS.items():
        console.print(f"  [bold]{variant}[/]: {description}")


@app.command()
def env(json_output: JsonFlag = False) -> None:
    """Show versions, execution providers, CUDA devices, TensorRT and CPU cores."""
    from ccnbench.environment import describe

    rows = describe()
    if json_output:
        _print_json(rows)
        return
    table = Table(title="ccnbench environment", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def roofs(
    targets: Annotated[
        str, typer.Option("--targets", help="Targets whose runtimes' roofs to show.")
    ] = "torch:cpu,ort:cpu,openvino:cpu",
    precision: Annotated[
        str, typer.Option("--precision", help="Precisions of the compute roofs, comma-separated.")
    ] = "fp32",
    threads: Threads = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Measure again; a roof keeps the best repeat of every measurement (noise only lowers one).",
        ),
    ] = False,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset", help="Forget the cached roofs and measure anew (the machine itself changed)."
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """The machine's measured roofs (a GEMM per runtime, a memory triad) that explain and the report read times against."""
    from ccnbench.backends import Target
    from ccnbench.environment import default_threads
    from ccnbench.roofline.command import rate_text, roof_rows

    parsed = [Target.parse(t) for t in targets.split(",") if t.strip()]
    precisions = [p.strip() for p in precision.split(",") if p.strip()]
    count = threads or default_threads()
    with _progress() as progress:
        task = progress.add_task("roofs", total=None)
        machine, rows = roof_rows(
            parsed, precisions, count, refresh, lambda text: progress.update(task, description=text), reset
        )
    if json_output:
        _print_json({"machine_id": machine, "threads": count, "roofs": [r.to_dict() for r in rows]})
        return
    table = Table(title=f"Measured roofs, machine {machine}, {count} thread(s)")
    for column in ("roof", "best", "median", "spread", "how", "measured"):
        table.add_column(column, justify="right" if column in ("best", "median", "spread") else "left")
    for row in rows:
        r = row.roof
        if r is None:
            table.add_row(row.label, "-", "-", "-", row.note, "")
            continue
        table.add_row(
            row.label,
            rate_text(r, r.rate),
            rate_text(r, r.median),
            f"{r.spread:.0%}",
            r.method,
            r.measured_at,
        )
    console.print(table)
    _note(
        "spread: (best - worst) / best over the repeats (of every measurement since --reset); a wide one "
        "means the machine was busy: --refresh on a quiet machine raises a roof measured low.",
        "dim",
    )


@app.command("export")
def export_cmd(
    variant: ExportVariants = None,
    layout: Layout = "kept",
    branches: BranchList = None,
    preset: Preset = None,
    input_mode: InputMode = None,
    precision: ExportPrecisions = "fp32",
    io: IoType = "fp32",
    opset: Opset = 18,
    seed: Seed = None,
    model: UserModel = None,
    input_shape: InputShape = None,
    merge: Merge = None,
    out: ExportOut = Path("artifacts"),
    force: Force = False,
    engine: EngineFlag = False,
    engine_batch: EngineBatch = "1,8,32",
    file_format: FileFormat = "onnx",
    device: Pt2Device = "cpu",
    calibration: Calibration = None,
    json_output: JsonFlag = False,
) -> None:
    """Export variants, or your own model (--model), to validated ONNX files (kept or merged, fp32,
    fp16 or int8 QDQ) or to .pt2 packages."""
    options = {k: v for k, v in locals().items() if k != "json_output"}
    from ccnbench.run import export_files

    made = export_files.make(export_files.Request(**options), _run_jobs)
    if json_output:
        _print_json(made.json)
    for item, style in [] if json_output else made.shown:
        if isinstance(item, str):
            _note(item, style)
        else:
            console.print(item)
    if not made.passed:
        raise typer.Exit(1)


@app.command()
def check(
    variant: Variants = MODEL_DEFAULTS["variants"],
    layout: Layout = MODEL_DEFAULTS["layouts"],
    branches: BranchList = None,
    preset: Preset = MODEL_DEFAULTS["preset"],
    input_mode: InputMode = MODEL_DEFAULTS["input_modes"],
    targets: Targets = ",".join(DEFAULTS.targets),
    precision: Precisions = ",".join(DEFAULTS.precisions),
    batch: Batches = ",".join(map(str, DEFAULTS.batches)),
    atol: Atol = None,
    rtol: Rtol = None,
    tol: PerOutputTol = None,
    onnx: OnnxFiles = None,
    model: UserModel = None,
    input_shape: InputShape = None,
    merge: Merge = None,
    load_inputs: LoadInputs = None,
    load_outputs: LoadOutputs = None,
    opset: Opset = DEFAULTS.opset,
    seed: Seed = DEFAULTS.seed,
    threads: Threads = None,
    artifacts: ArtifactsDir = Path(DEFAULTS.artifacts),
    eval_inputs: EvalInputs = None,
    json_output: JsonFlag = False,
) -> None:
    """Check every target's outputs against the float64 oracle; exit 1 if any available target fails."""
    flags = _sweep_flags(locals())
    from ccnbench.answers import tables
    from ccnbench.run import check as checking

    groups = checking.planned(flags)
    with _progress() as progress:
        task = progress.add_task("checking", total=sum(len(g.batches) for g in groups))
        results = checking.run(groups, lambda g, _: progress.update(task, description=g.label, advance=1))
    code = checking.exit_code(results)
    if json_output:
        _print_json({"passed": code == 0, "cases": [r.to_dict() for r in results]})
    else:
        console.print(tables.check_table(results))
        _print_problems(results)
        summary = checking.summary(results)
        if summary:
            console.print(summary)
        _print_unchecked(results)
    if code:
        raise typer.Exit(code)


@app.command()
def bench(
    config: SweepFile = None,
    variant: Variants = None,
    layout: Layout = None,
    branches: BranchList = None,
    preset: Preset = None,
    input_mode: InputMode = None,
    targets: Targets = None,
    precision: Precisions = None,
    batch: Batches = None,
    onnx: OnnxFiles = None,
    model: UserModel = None,
    input_shape: InputShape = None,
    merge: Merge = None,
    load_inputs: LoadInputs = None,
    load_outputs: LoadOutputs = None,
    quick: Quick = False,
    transfers: Transfers = False,
    timeout: Timeout = None,
    out: RunOut = None,
    resume: Resume = None,
    name: RunName = None,
    shard: Shard = None,
    seed: Seed = None,
    threads: Threads = None,
    artifacts: ArtifactsDir = None,
    isolation: Isolation = None,
    dynamic_batch: DynamicBatch = False,
    memory_format: MemoryFormat = None,
    budget_minutes: Budget = None,
    report: WriteReport = True,
) -> None:
    """Benchmark targets: one timing protocol, agreement for every case, isolated workers, resumable."""
    flags = _sweep_flags(locals())
    from ccnbench.run import sweep

    run, sweep_config, run_dir = sweep.begin(flags, config, resume, out)
    err_console.print(f"run directory: {run_dir}", markup=False, highlight=False)
    with _progress() as progress:
        task = progress.add_task("starting", total=None)
        events = sweep.SweepEvents(
            on_total=lambda total: progress.update(task, total=total),
            on_group=lambda group: progress.update(task, description=group.label),
            on_case=lambda case: progress.advance(task),
            on_note=lambda text: progress.update(task, description=text),
        )
        try:
            budget = budget_minutes * 60 if budget_minutes else None
            run = sweep.execute(run, sweep_config, run_dir, events, budget_seconds=budget)
        except KeyboardInterrupt:
            raise CcnbenchError(f"interrupted; finished cases are saved: resume with --resume {run_dir}") from None  # fmt: skip
    _bench_finish(run, run_dir, report)


def _bench_finish(run: Any, run_dir: Path, report: bool) -> None:
    from ccnbench.answers import tables
    from ccnbench.run.check import exit_code

    console.print(tables.bench_table(list(run.cases), title=f"{run.run_id}: {run.environment.summary()}"))
    _print_problems(run.cases)
    _print_unchecked(run.cases)
    _print_load(run.cases)
    if report:
        from ccnbench.answers.report import write_report

        console.print(f"report: {write_report([run_dir], run_dir)}", highlight=False)
    console.print(f"results: {run_dir / 'results.json'}", highlight=False)
    _print_closing_notes(run, run_dir)
    code = exit_code(run.cases)
    if code:
        raise typer.Exit(code)


def _print_closing_notes(run: Any, run_dir: Path) -> None:
    """``sweep.closing_notes`` on stderr, as text: they name sweep keys like ``[protocol]``."""
    from ccnbench.run import sweep

    for line in sweep.closing_notes(run, run_dir):
        err_console.print(line, highlight=False, markup=False)


# fmt: off
RunDirs = Annotated[list[Path], typer.Argument(help="Run directories (or results.json files) to report on together.")]
ReportOut = Annotated[Path | None, typer.Option("--out", "-o", help="--format report: where report.md, report.html and plots/ go (default: the first run's directory). A dashboard format: the JSON file to write (default: <first run>/<format>.json).")]
ReportFormat = Annotated[str, typer.Option("--format", help="report (report.md, report.html, plots), or one run as a dashboard's JSON: github-action-benchmark (tool customSmallerIsBetter) or bencher (Bencher Metric Format). Dashboards get each case's time over eager PyTorch's on the same machine, with its 95% interval.")]
Base = Annotated[Path, typer.Argument(help="Baseline: a run directory, results.json or pytest-benchmark JSON.")]
New = Annotated[Path, typer.Argument(help="The run to judge, of the same kind as BASE.")]
Margin = Annotated[
    str, typer.Option("--margin", help="Equivalence margin: formats whose ratio is known within it are a tie.")
]
Threshold = Annotated[str, typer.Option("--threshold", help="Slow-down that counts as a regression: 10% or 0.1.")]
Metric = Annotated[
    str,
    typer.Option(
        "--metric",
        help="fastest: the fastest call, a format's own speed (relative: the paired ratio to eager PyTorch "
        "that every view shows, with its interval, where both ran in one contest). p50 (the median), p99 "
        "and throughput (samples/s at the median) depend on the host's load (relative: unpaired ratios "
        "to eager PyTorch's in the same run).",
    ),
]
Absolute = Annotated[bool, typer.Option("--absolute", help="Compare raw times instead of ratios to eager PyTorch in the same run.")]
By = Annotated[str, typer.Option("--by", help="Judge each case, or each target by its geometric mean: case|target.")]
FailOnMissing = Annotated[bool, typer.Option("--fail-on-missing", help="Also fail when a baseline case is missing from NEW.")]
ForceSpeed = Annotated[bool, typer.Option("--force-speed", help="Judge speed changes even when the runs' machine or software differ or are unknown (only for a BASE you know was measured like NEW; never across the shards of one run measured on different machines).")]
Runs = Annotated[list[Path], typer.Argument(help="Run directories (or results.json files).")]
OnlyPrecisions = Annotated[str | None, typer.Option("--precision", help="Only consider these precisions (comma list; int8 files only when named: int8, int8-u8, int8-s8).")]
Shippable = Annotated[bool, typer.Option("--shippable", help="Only formats that ship as a file (ONNX, .pt2, engine): no model code at run time.")]
# fmt: on


@app.command()
def report(runs: RunDirs, out: ReportOut = None, report_format: ReportFormat = "report") -> None:
    """Write report.md, a self-contained report.html and plots for one or more runs, or one run's
    dashboard file (--format github-action-benchmark|bencher)."""
    from ccnbench.answers import dashboard

    if report_format != "report":
        if report_format not in dashboard.FORMATS:
            choices = ", ".join(("report", *dashboard.FORMATS))
            raise UsageError(f"unknown --format {report_format!r}; choose from {choices}")
        made = dashboard.write_dashboard(runs, report_format, out)
        count = len(made.export.entries)
        tool = (
            f" (tool: {dashboard.GITHUB_TOOL})" if report_format == dashboard.GITHUB_ACTION_BENCHMARK else ""
        )
        _note(f"wrote {count} benchmark{'s' if count != 1 else ''} to {made.path}{tool}")
        left_out = made.export.left_out_text()
        if left_out:
            err_console.print(f"note: {left_out}", style="yellow", markup=False, highlight=False)
        return
    from ccnbench.answers.report import write_report

    written = write_report(runs, out)
    console.print(
        f"wrote {written}, {written.with_suffix('.html')} and {written.parent / 'plots'}/", highlight=False
    )


@app.command()
def compare(
    base: Base,
    new: New,
    threshold: Threshold = "10%",
    metric: Metric = "fastest",
    absolute: Absolute = False,
    by: By = "case",
    fail_on_missing: FailOnMissing = False,
    force_speed: ForceSpeed = False,
    json_output: JsonFlag = False,
) -> None:
    """Regression gate: exit 1 on a new agreement failure, a new crash, or a slow-down beyond the threshold
    (speed only between runs from the same machine and software)."""
    from ccnbench.answers import compare as comparing
    from ccnbench.answers import compare_sides

    base_side, new_side = compare_sides.load_side(base), compare_sides.load_side(new)
    if base_side.kind != new_side.kind:
        raise UsageError(f"cannot compare a {base_side.kind} file with a {new_side.kind} file")
    result = comparing.compare(
        base_side.rows,
        new_side.rows,
        metric=metric,
        threshold=comparing.parse_threshold(threshold),
        relative=not absolute,
        by=by,
        fail_on_missing=fail_on_missing,
        unlike=compare_sides.machine_differences(base_side, new_side),
        force_speed=force_speed,
    )
    if json_output:
        _print_json(result.to_dict())
    else:
        print(result.markdown(), end="")
    if result.failed:
        raise typer.Exit(1)


@app.command()
def recommend(
    runs: Runs,
    precision: OnlyPrecisions = None,
    shippable: Shippable = False,
    margin: Margin = "10%",
    json_output: JsonFlag = False,
) -> None:
    """Which format to ship: the fastest target, layout and precision that agrees with the oracle."""
    from ccnbench import shard
    from ccnbench.answers.compare import parse_threshold
    from ccnbench.answers.derived import all_cases
    from ccnbench.answers.recommend import recommend as recommending
    from ccnbench.formats.int8 import expand_alias, is_int8

    equivalence = parse_threshold(margin, "--margin")
    cases = all_cases(shard.load_runs(runs))
    if precision:
        precisions = expand_alias([p.strip() for p in precision.split(",")])
    else:
        # int8 is graded by agreement measures, not the float tolerances: ranking it against the
        # float formats is a later step, so it is ranked only when asked for by name.
        precisions = sorted({c.key.precision for c in cases if not is_int8(c.key.precision)}) or None
    recs = recommending(cases, precisions, shippable=shippable, equivalence=equivalence)
    if json_output:
        _print_json([r.to_dict() for r in recs])
        return
    for r in recs:
        _note(r.line())
        for reason in r.rejected:
            _note(f"    rejected: {reason}", "yellow")
        for reason in r.not_measured:
            _note(f"    not measured: {reason}", "dim")
    _print_load(cases)


@app.command()
def explain(
    variant: Variants = "model",
    layout: Layout = None,
    branches: BranchList = None,
    preset: Preset = MODEL_DEFAULTS["preset"],
    input_mode: InputMode = MODEL_DEFAULTS["input_modes"],
    targets: Targets = None,
    precision: Precisions = "fp32",
    batch: Batches = "1",
    onnx: OnnxFiles = None,
    model: UserModel = None,
    input_shape: InputShape = None,
    merge: Merge = None,
    seed: Seed = DEFAULTS.seed,
    threads: Threads = None,
    artifacts: ArtifactsDir = Path(DEFAULTS.artifacts),
    compare: CompareFormats = None,
    rounds: ExplainRounds = 8,
    calls: ExplainCalls = 20,
    trace: TraceDir = None,
    out: ExplainOut = None,
    roofline: RooflineFlag = True,
    json_output: JsonFlag = False,
) -> None:
    """Where each format spends its time, layer by layer, from each runtime's own profiler
    (--compare: two formats side by side), and how far each layer is from the machine's roofs."""
    flags = _sweep_flags(locals())
    from ccnbench.explain import command, render
    from ccnbench.explain.cases import Settings

    settings = Settings(rounds, calls, trace, roofline)
    with _progress() as progress:
        task = progress.add_task("profiling", total=None)
        try:
            done = command.explain(
                flags,
                compare,
                settings,
                on_case=lambda label: progress.update(task, description=label, advance=1),
                on_total=lambda total: progress.update(task, total=total),
                on_measure=lambda text: progress.update(task, description=text),
            )
        except KeyboardInterrupt:
            raise CcnbenchError("interrupted: no table was printed") from None
    failed = [s for s in done.skipped if not s.reason.startswith("unavailable")]
    if out is not None:
        from ccnbench.fileio import write_text

        write_text(out, json.dumps(done.to_dict(), indent=1))
        err_console.print(f"wrote {out}", markup=False, highlight=False)
    if json_output:
        _print_json(done.to_dict())
    else:
        for table in done.tables:
            console.print(render.table_of(table))
            against_roofs = render.roofline_table(table)
            if against_roofs is not None:
                console.print(against_roofs)
            for line in render.roof_lines(table):
                _note(f"  {line}")
            for note in table.notes:
                _note(f"  {note}", "dim")
        if done.tables:
            _note(render.LEGEND, "dim")
        for line in render.overhead_lines(done.profiles):
            _note(line)
        for line in done.notes:
            _note(line, "yellow")
        for s in done.skipped:
            _note(f"{s.label}: {s.reason}", "red" if s in failed else "dim")
    if failed or not done.profiles:
        raise typer.Exit(1)


def _print_problems(cases: Any) -> None:
    from ccnbench.run.check import problem_lines

    for line, style in problem_lines(cases):
        _note(line, style)


def _print_load(cases: Any) -> None:
    """A warning when the machine was busy while the cases were timed (``derived.load_note``)."""
    from ccnbench.answers.derived import load_note

    note = load_note(cases)
    if note:
        err_console.print(f"note: {note}", style="yellow", markup=False, highlight=False)


def _print_unchecked(cases: Any) -> None:
    """A warning when some cases were only compared with themselves."""
    from ccnbench.run.check import unchecked_note

    note = unchecked_note(cases)
    if note:
        err_console.print(f"note: {note}", style="yellow", markup=False, highlight=False)


def _note(line: str, style: str | None = None) -> None:
    console.print(line, style=style, markup=False, highlight=False)


def _run_jobs(title: str, jobs: Any) -> list[Any]:
    """Run ``export_files.Job``s one after another under a progress bar; their results in order."""
    if not jobs:
        return []
    made = []
    with _progress() as progress:
        task = progress.add_task(title, total=len(jobs))
        for job in jobs:
            progress.update(task, description=job.what or title)
            made.append(job.run(lambda what: progress.update(task, description=what)))
            progress.advance(task)
    return made


def _progress() -> Any:
    from ccnbench.progress import bar

    return bar(err_console)


def _print_json(data: Any) -> None:
    import json

    # Plain print: rich would wrap long lines and break the JSON for scripts.
    print(json.dumps(data, indent=2, default=str))


# The training commands (shapes, train-check, train-bench, checkpoint, unmerge) live with their library.
training_commands.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    return app(args=argv, prog_name="ccnbench", standalone_mode=False) or 0
