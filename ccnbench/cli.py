"""The `ccnbench` command line. Commands parse options and call the library; no logic lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from ccnbench import __version__
from ccnbench.config import DEFAULTS, MODEL_DEFAULTS, PRECISIONS
from ccnbench.errors import CcnbenchError

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


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    """ccnbench: build, export, check and benchmark multi-branch 3D CNNs."""


# --- shared options (defined once) ------------------------------------------------------------

Preset = Annotated[str, typer.Option("--preset", "-p", help="Size preset: tiny, small, medium.")]
Branches = Annotated[
    int | None, typer.Option("--branches", "-n", help="Number of branches N (default: the preset's).")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Layout = Annotated[
    str, typer.Option("--layout", "-l", help="kept (one op per branch), merged (one op per layer) or all.")
]
BranchList = Annotated[
    str | None,
    typer.Option("--branches", "-n", help="Branch count N, or a comma list (default: the preset's)."),
]
InputMode = Annotated[
    str,
    typer.Option("--input-mode", help="separate (one input per branch), shared (one input for all), or all."),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the weights and inputs.")]
Variants = Annotated[
    str,
    typer.Option("--variant", "-v", help="early, feature, model, decision, multitask, a comma list, or all."),
]
Targets = Annotated[
    str,
    typer.Option(
        "--targets",
        "-t",
        help="backend:device list, e.g. torch:cpu,ort:cpu,compile:cpu,ort:cuda,tensorrt:cuda; or all, cpu, cuda.",
    ),
]
Batches = Annotated[str, typer.Option("--batch", "-b", help="Batch sizes, a comma list.")]
Precisions = Annotated[
    str, typer.Option("--precision", help="fp32, fp16, bf16 (torch targets), a comma list.")
]
OnnxFiles = Annotated[
    list[Path] | None,
    typer.Option("--onnx", help="Your own ONNX file (repeatable) instead of ccnbench's variants."),
]
UserModel = Annotated[
    str | None,
    typer.Option("--model", help="Your own nn.Module factory: package.module:function or file.py:function."),
]
InputShape = Annotated[
    str | None,
    typer.Option("--input-shape", help="With --model: one input's shape without batch, e.g. 1x24x24x24."),
]
LoadInputs = Annotated[
    Path | None,
    typer.Option("--load-inputs", help="With --onnx: saved reference inputs (Polygraphy JSON or .npz)."),
]
LoadOutputs = Annotated[
    Path | None,
    typer.Option("--load-outputs", help="With --onnx: saved reference outputs (Polygraphy JSON or .npz)."),
]
ArtifactsDir = Annotated[Path, typer.Option("--artifacts", help="Where ONNX files, engines and caches go.")]
Threads = Annotated[
    int | None, typer.Option("--threads", help="CPU threads for every target (default: physical cores).")
]


ExportVariants = Annotated[
    str,
    typer.Option(
        "--variant", "-v", help="Variant(s): early, feature, model, decision, multitask, a comma list or all."
    ),
]
ExportPrecisions = Annotated[str, typer.Option("--precision", help="fp32, fp16, a comma list or all.")]
IoType = Annotated[str, typer.Option("--io", help="I/O type of fp16 graphs: fp32 (casts inside) or fp16.")]
Opset = Annotated[
    int, typer.Option("--opset", help="ONNX opset (default 18: read by ONNX Runtime and TensorRT 10/11).")
]
ExportOut = Annotated[Path, typer.Option("--out", "-o", help="Directory for the .onnx files.")]
Force = Annotated[bool, typer.Option("--force", help="Export again even if an identical artifact exists.")]
EngineFlag = Annotated[
    bool,
    typer.Option("--engine", help="Also build a TensorRT engine and its layer listing beside each file."),
]
EngineBatch = Annotated[
    str, typer.Option("--engine-batch", help="With --engine: batch sizes the engine's profile covers.")
]
FileFormat = Annotated[
    str,
    typer.Option(
        "--format",
        help="onnx (validated ONNX files) or pt2 (AOTInductor packages: no model code needed to run them).",
    ),
]
Pt2Device = Annotated[
    str, typer.Option("--device", help="With --format pt2: cpu or cuda (the package is compiled for it).")
]
Atol = Annotated[float | None, typer.Option("--atol", help="Absolute tolerance (default: per precision).")]
Rtol = Annotated[float | None, typer.Option("--rtol", help="Relative tolerance (default: per precision).")]
PerOutputTol = Annotated[
    list[str] | None,
    typer.Option("--tol", help="Per-output override name=atol[,rtol], e.g. regression=1e-3,1e-3."),
]
# bench: every option defaults to "not given" (None, or False for a switch); ccnbench.config
# holds the defaults and decides what a flag may combine with.
SweepFile = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="Sweep file (TOML), or a bundled sweep's name: cpu-default, ci-quick, gpu-h100.",
    ),
]
Quick = Annotated[bool, typer.Option("--quick", help="Short warm-up and measurement (CI, smoke runs).")]
Transfers = Annotated[bool, typer.Option("--transfers", help="CUDA: also time host<->device copies.")]
Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout", help=f"Seconds a worker may take for one case group (default {DEFAULTS.timeout:g})."
    ),
]
RunOut = Annotated[
    Path | None, typer.Option("--out", "-o", help="Run directory (default results/<time>-<name>).")
]
Resume = Annotated[Path | None, typer.Option("--resume", help="Finish an interrupted run in this directory.")]
RunName = Annotated[
    str | None, typer.Option("--name", help="Run name, used in the default run directory (default bench).")
]
Shard = Annotated[
    str | None,
    typer.Option("--shard", help="K/N: run the K-th of N parts of the sweep (one per CI runner or machine)."),
]
Isolation = Annotated[
    str | None,
    typer.Option(
        "--isolation",
        help="group: a fresh worker per case group; model: one per model (faster); device: one per "
        "device for the whole sweep (fewest CUDA start-ups); default group.",
    ),
]
DynamicBatch = Annotated[
    bool,
    typer.Option("--dynamic-batch", help="torch.compile one graph for all batch sizes (less compile time)."),
]
MemoryFormat = Annotated[
    str | None,
    typer.Option(
        "--memory-format",
        help="PyTorch targets: weights in contiguous and/or channels_last_3d (cuDNN for every conv on CUDA); "
        "comma list, default contiguous.",
    ),
]
Budget = Annotated[
    float | None, typer.Option("--budget-minutes", help="Start no new group after this long; resume later.")
]
WriteReport = Annotated[
    bool, typer.Option("--report/--no-report", help="Write report.md and plots at the end.")
]


def _unset(option: Any, kind: Any = str | None) -> Any:
    """The same option with "not given" (None) as its default: the configuration route fills it in."""
    return Annotated[kind, option.__metadata__[0]]


@app.command()
def variants(
    preset: Preset = "small",
    branches: Branches = None,
    json_output: JsonFlag = False,
) -> None:
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
        table.add_row(
            r["label"],
            r["inputs"],
            f"{r['params_kept']:,}",
            f"{r['params_merged']:,}",
            f"{r['flops_per_sample'] / 1e6:,.1f}",
        )
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


@app.command("export")
def export_cmd(
    variant: _unset(ExportVariants) = None,
    layout: Layout = "kept",
    branches: BranchList = None,
    preset: _unset(Preset) = None,
    input_mode: _unset(InputMode) = None,
    precision: ExportPrecisions = "fp32",
    io: IoType = "fp32",
    opset: Opset = 18,
    seed: _unset(Seed, int | None) = None,
    model: UserModel = None,
    input_shape: InputShape = None,
    out: ExportOut = Path("artifacts"),
    force: Force = False,
    engine: EngineFlag = False,
    engine_batch: EngineBatch = "1,8,32",
    file_format: FileFormat = "onnx",
    device: Pt2Device = "cpu",
    json_output: JsonFlag = False,
) -> None:
    """Export variants, or your own model (--model), to validated ONNX files (kept or merged, fp32 or
    fp16) or to .pt2 packages."""
    from ccnbench import selection
    from ccnbench.export import PRECISIONS, export

    packages = _wants_packages(file_format, engine)
    if model is not None:
        given = [n for n, v in (("--variant", variant), ("--preset", preset), ("--input-mode", input_mode),
                                ("--seed", seed)) if v is not None]  # fmt: skip
        if given:
            raise UsageError(
                f"{given[0]} describes ccnbench's own variants; --model exports your module as it is"
            )
        engine_batches = _engine_batches(engine, engine_batch)
        exported = _export_user_model(model, input_shape, branches, layout, precision, io, opset, out, force,
                                      file_format, device)  # fmt: skip
        engines = _build_engines([f.artifact for f in exported.files], engine_batches, out)
        _print_user_export(exported, out, json_output, engines)
        return
    if input_shape is not None:
        raise UsageError(
            "--input-shape goes with --model; ccnbench's variants take their shape from --preset"
        )
    variant, preset, input_mode, seed = (
        variant or "all",
        preset or "small",
        input_mode or "separate",
        seed or 0,
    )
    if packages:
        _export_packages(variant, layout, branches, preset, input_mode, precision, seed, out, force, device,
                         json_output)  # fmt: skip
        return
    engine_batches = _engine_batches(engine, engine_batch)
    specs = selection.specs(preset, variant, branches, input_mode, seed)
    jobs = [
        (spec, lay, prec)
        for spec in specs
        for lay in selection.layouts(layout)
        for prec in selection.choices(precision, PRECISIONS, "precision")
    ]
    artifacts = []
    with _progress() as progress:
        task = progress.add_task("exporting", total=len(jobs))
        for spec, lay, prec in jobs:
            progress.update(task, description=f"{spec.label} {lay} {prec}")
            artifacts.append(export(spec, lay, prec, opset=opset, out_dir=out, io=io, force=force))
            progress.advance(task)
    _print_exports(artifacts, _build_engines(artifacts, engine_batches, out), out, json_output)


def _engine_batches(engine: bool, engine_batch: str) -> tuple[int, ...] | None:
    """``--engine``'s batch sizes, checked before any export: asking for an engine that cannot be
    built is an error, not a note after the files are written. None without ``--engine``."""
    from ccnbench import selection
    from ccnbench.backends.tensorrt import TensorRTBackend

    if not engine:
        return None
    reason = TensorRTBackend().availability("cuda")
    if reason:
        raise CcnbenchError(f"--engine: {reason}")
    return selection.integers(engine_batch, "--engine-batch")


def _build_engines(artifacts: Any, batches: tuple[int, ...] | None, out: Path) -> dict[Any, Any]:
    """A TensorRT engine beside each ONNX file (``--engine``), by file path; {} without it."""
    from ccnbench.backends import BuildOptions
    from ccnbench.backends.tensorrt import export_engine

    engines: dict[Any, Any] = {}
    if batches is None:
        return engines
    with _progress() as progress:
        task = progress.add_task("building TensorRT engines", total=len(artifacts))
        for a in artifacts:
            progress.update(task, description=f"engine for {a.path.name}")
            options = BuildOptions(precision=a.precision, batch_sizes=batches, artifacts_dir=out, io=a.io)
            engines[a.path] = export_engine(a, options)
            progress.advance(task)
    return engines


def _export_user_model(
    model: str, input_shape: str | None, branches: Any, layout: str, precision: str, io: str, opset: int,
    out: Path, force: bool, file_format: str, device: str,
) -> Any:  # fmt: skip
    """``export --model``: the factory's module in each layout, written and graded in float64."""
    from ccnbench import pt2, selection
    from ccnbench.backends.aoti import AotiBackend
    from ccnbench.export import PRECISIONS
    from ccnbench.model_export import export_model

    if file_format == "pt2":
        if io != "fp32":
            raise UsageError("--io sets an ONNX file's input type; a .pt2 package takes float32 inputs")
        if device not in pt2.DEVICES:
            raise UsageError(f"--device {device!r}: a .pt2 package is built for {' or '.join(pt2.DEVICES)}")
        reason = AotiBackend().availability(device)
        if reason:
            raise CcnbenchError(f"--format pt2: {reason}")
    allowed = pt2.PRECISIONS[device] if file_format == "pt2" else PRECISIONS
    precisions = selection.choices(precision, allowed, "precision")
    sources = selection.sources(layouts_=layout, branches=branches, model=model, shape=input_shape)
    with _progress() as progress:
        task = progress.add_task("exporting and checking against the float64 kept module", total=None)
        return export_model(sources, precisions, out, file_format=file_format, device=device, io=io,
                            opset=opset, force=force,
                            on_file=lambda what: progress.update(task, description=what))  # fmt: skip


def _print_user_export(
    exported: Any, out: Path, json_output: bool, engines: dict[Any, Any] | None = None
) -> None:
    """The files of ``export --model`` with their Conv counts and agreement, then what the merge did."""
    engines = engines or {}
    if json_output:
        data = exported.to_dict()
        for f, file in zip(data["files"], exported.files):
            if file.artifact.path in engines:
                f["engine"] = engines[file.artifact.path]
        _print_json(data)
    else:
        table = Table(title=f"Your model's files in {out}, each checked against the kept module in float64")
        table.add_column("file", overflow="fold")
        for col in ("layout", "size", "Conv", "seconds", "max abs", "verdict"):
            table.add_column(col, justify="left" if col in ("layout", "verdict") else "right", no_wrap=True)
        for f in exported.files:
            a = f.artifact
            seconds = "reused" if a.reused else f"{a.export_seconds:.1f}"
            conv = "-" if getattr(a, "conv_count", None) is None else str(a.conv_count)
            verdicts = sorted({r.verdict for r in f.validation})
            max_abs = f"{f.max_abs:.1e}" if f.max_abs is not None else "-"
            table.add_row(
                a.path.name, a.layout, _mib(a.size_bytes), conv, seconds, max_abs, ", ".join(verdicts)
            )
        console.print(table)
        for source, note in exported.merges():
            if note.get("merged"):
                for line in note["description"].splitlines():
                    console.print(
                        f"merged ({source.num_inputs} branches): {line}", markup=False, highlight=False
                    )
        for source, reason in exported.not_merged:
            console.print(f"merged ({source.num_inputs} branches): not written, the branches stay kept: {reason}",
                          style="yellow", markup=False, highlight=False)  # fmt: skip
        cases = [r for f in exported.files for r in f.validation]
        _print_problems(cases)
        for built in engines.values():
            console.print(
                f"engine {built['engine']}: {_mib(built['size_bytes'])}", markup=False, highlight=False
            )
    if not exported.passed:
        raise typer.Exit(1)


def _export_packages(
    variant: str, layout: str, branches: Any, preset: str, input_mode: str, precision: str, seed: int,
    out: Path, force: bool, device: str, json_output: bool,
) -> None:  # fmt: skip
    """``export --format pt2``: AOTInductor packages, built once and reused like ONNX files."""
    from ccnbench import pt2, selection
    from ccnbench.backends.aoti import AotiBackend
    from ccnbench.source import ModelSource

    if device not in pt2.DEVICES:
        raise UsageError(f"--device {device!r}: a .pt2 package is built for {' or '.join(pt2.DEVICES)}")
    reason = AotiBackend().availability(device)
    if reason:
        raise CcnbenchError(f"--format pt2: {reason}")
    specs = selection.specs(preset, variant, branches, input_mode, seed)
    precisions = selection.choices(precision, pt2.PRECISIONS[device], "precision")
    jobs = [(s, lay, p) for s in specs for lay in selection.layouts(layout) for p in precisions]
    packages = []
    with _progress() as progress:
        task = progress.add_task("building .pt2 packages", total=len(jobs))
        for spec, lay, prec in jobs:
            progress.update(task, description=f"{spec.label} {lay} {prec} (.pt2, {device})")
            packages.append(pt2.package(ModelSource.from_spec(spec, lay), device, prec, out, force=force))
            progress.advance(task)
    if json_output:
        _print_json([p.to_dict() for p in packages])
        return
    table = Table(title=f".pt2 packages in {out}")
    table.add_column("file", overflow="fold")
    for col in ("size", "machine", "seconds"):
        table.add_column(col, justify="right", no_wrap=True)
    for p in packages:
        seconds = "reused" if p.reused else f"{p.build_seconds:.1f}"
        table.add_row(p.path.name, _mib(p.size_bytes), p.machine, seconds)
    console.print(table)


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
    load_inputs: LoadInputs = None,
    load_outputs: LoadOutputs = None,
    opset: Opset = DEFAULTS.opset,
    seed: Seed = DEFAULTS.seed,
    threads: Threads = None,
    artifacts: ArtifactsDir = Path(DEFAULTS.artifacts),
    json_output: JsonFlag = False,
) -> None:
    """Check every target's outputs against the float64 oracle; exit 1 if any available target fails."""
    from ccnbench import check as checking
    from ccnbench import plan, selection, tables
    from ccnbench.agreement import TolerancePolicy
    from ccnbench.backends import parse_targets

    saved = _saved_reference(load_inputs, load_outputs)
    sources = selection.sources(
        preset, variant, layout, branches, input_mode, seed, model, input_shape, [str(p) for p in onnx or []],
        saved,
    )  # fmt: skip
    precisions = selection.choices(precision, PRECISIONS, "precision")
    batches, overrides = selection.integers(batch, "batch sizes"), TolerancePolicy.parse_overrides(tol or [])
    groups = plan.case_groups(sources, parse_targets(targets), precisions, batches, artifacts, opset=opset,
                           threads=threads, atol=atol, rtol=rtol, per_output=overrides, seed=seed)  # fmt: skip
    results = _run_checks(groups)
    code = checking.exit_code(results)
    if json_output:
        _print_json({"passed": code == 0, "cases": [r.to_dict() for r in results]})
    else:
        console.print(tables.check_table(results))
        _print_problems(results)
        _print_summary(results)
    if code:
        raise typer.Exit(code)


@app.command()
def bench(
    config: SweepFile = None,
    variant: _unset(Variants) = None,
    layout: _unset(Layout) = None,
    branches: BranchList = None,
    preset: _unset(Preset) = None,
    input_mode: _unset(InputMode) = None,
    targets: _unset(Targets) = None,
    precision: _unset(Precisions) = None,
    batch: _unset(Batches) = None,
    onnx: OnnxFiles = None,
    model: UserModel = None,
    input_shape: InputShape = None,
    load_inputs: LoadInputs = None,
    load_outputs: LoadOutputs = None,
    quick: Quick = False,
    transfers: Transfers = False,
    timeout: Timeout = None,
    out: RunOut = None,
    resume: Resume = None,
    name: RunName = None,
    shard: Shard = None,
    seed: _unset(Seed, int | None) = None,
    threads: Threads = None,
    artifacts: _unset(ArtifactsDir, Path | None) = None,
    isolation: Isolation = None,
    dynamic_batch: DynamicBatch = False,
    memory_format: MemoryFormat = None,
    budget_minutes: Budget = None,
    report: WriteReport = True,
) -> None:
    """Benchmark targets: one timing protocol, agreement for every case, isolated workers, resumable."""
    flags = {
        "--variant": variant, "--layout": layout, "--branches": branches, "--preset": preset,
        "--input-mode": input_mode, "--targets": targets, "--precision": precision, "--batch": batch,
        "--onnx": onnx, "--model": model, "--input-shape": input_shape, "--load-inputs": load_inputs,
        "--load-outputs": load_outputs, "--quick": quick, "--transfers": transfers, "--timeout": timeout,
        "--name": name, "--shard": shard, "--seed": seed, "--threads": threads, "--artifacts": artifacts,
        "--isolation": isolation, "--dynamic-batch": dynamic_batch, "--memory-format": memory_format,
    }  # fmt: skip
    run, sweep_config, run_dir = _bench_start(flags, config, resume, out)
    run = _bench_execute(run, sweep_config, run_dir, budget_minutes)
    _bench_finish(run, run_dir, report)


def _bench_start(flags: dict[str, Any], config: str | None, resume: Path | None, out: Path | None) -> Any:
    """The run to execute: a stored one to finish, or a new one from a sweep file or the flags."""
    from ccnbench import config as configuration
    from ccnbench import sweep

    if resume is not None:
        configuration.check_resume(flags, config, out)
        run, sweep_config = sweep.resume(resume)
        return run, sweep_config, resume
    sweep_config = configuration.from_command_line(flags, config)
    run_dir = out or sweep.new_run_dir(Path("results"), sweep_config.name)
    return sweep.start(sweep_config, run_dir), sweep_config, run_dir


def _bench_execute(run: Any, sweep_config: Any, run_dir: Path, budget_minutes: float | None) -> Any:
    from ccnbench import sweep

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
            return sweep.execute(run, sweep_config, run_dir, events, budget_seconds=budget)
        except KeyboardInterrupt:
            raise CcnbenchError(
                f"interrupted; finished cases are saved: resume with --resume {run_dir}"
            ) from None


def _bench_finish(run: Any, run_dir: Path, report: bool) -> None:
    from ccnbench import tables
    from ccnbench.check import exit_code, unchecked_note

    console.print(tables.bench_table(list(run.cases), title=f"{run.run_id}: {run.environment.summary()}"))
    _print_problems(run.cases)
    note = unchecked_note(run.cases)
    if note:
        err_console.print(f"note: {note}", style="yellow", markup=False, highlight=False)
    if report:
        from ccnbench.report import write_report

        written = write_report([run_dir], run_dir)
        console.print(f"report: {written}", highlight=False)
    console.print(f"results: {run_dir / 'results.json'}", highlight=False)
    if run.config.get("shard"):
        err_console.print(
            f"this is shard {run.config['shard']} of the sweep: report/compare/recommend take all its run "
            "directories together",
            highlight=False,
        )
    if not run.complete:
        err_console.print(
            f"budget spent: the run is incomplete; finish it with --resume {run_dir}", highlight=False
        )
    code = exit_code(run.cases)
    if code:
        raise typer.Exit(code)


@app.command()
def report(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories (or results.json files) to report on together.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where report.md, report.html and plots/ go.")
    ] = None,
) -> None:
    """Write report.md, a self-contained report.html and plots for one or more runs."""
    from ccnbench.report import write_report

    written = write_report(runs, out)
    console.print(
        f"wrote {written}, {written.with_suffix('.html')} and {written.parent / 'plots'}/", highlight=False
    )


@app.command()
def compare(
    base: Annotated[
        Path, typer.Argument(help="Baseline: a run directory, results.json or pytest-benchmark JSON.")
    ],
    new: Annotated[Path, typer.Argument(help="The run to judge, of the same kind as BASE.")],
    threshold: Annotated[
        str, typer.Option("--threshold", help="Slow-down that counts as a regression: 10% or 0.1.")
    ] = "10%",
    metric: Annotated[str, typer.Option("--metric", help="p50, p99 or throughput.")] = "p50",
    absolute: Annotated[
        bool,
        typer.Option(
            "--absolute", help="Compare raw times instead of ratios to eager PyTorch in the same run."
        ),
    ] = False,
    by: Annotated[
        str, typer.Option("--by", help="Judge each case, or each target by its geometric mean: case|target.")
    ] = "case",
    fail_on_missing: Annotated[
        bool, typer.Option("--fail-on-missing", help="Also fail when a baseline case is missing from NEW.")
    ] = False,
    force_speed: Annotated[
        bool,
        typer.Option(
            "--force-speed",
            help="Judge speed changes even when the runs' machine or software differ or are unknown "
            "(only for a BASE you know was measured like NEW).",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Regression gate: exit 1 on a new agreement failure, a new crash, or a slow-down beyond the threshold
    (speed only between runs from the same machine and software)."""
    from ccnbench import compare as comparing
    from ccnbench.errors import UsageError

    base_side, new_side = comparing.load_side(base), comparing.load_side(new)
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
        unlike=comparing.machine_differences(base_side, new_side),
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
    runs: Annotated[list[Path], typer.Argument(help="Run directories (or results.json files).")],
    precision: Annotated[
        str | None, typer.Option("--precision", help="Only consider these precisions (comma list).")
    ] = None,
    shippable: Annotated[
        bool,
        typer.Option(
            "--shippable",
            help="Only formats that ship as a file (ONNX, .pt2, engine): no model code at run time.",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Which format to ship: the fastest target, layout and precision that agrees with the oracle."""
    from ccnbench import shard
    from ccnbench.analysis import all_cases
    from ccnbench.recommend import recommend as recommending

    precisions = [p.strip() for p in precision.split(",")] if precision else None
    recs = recommending(all_cases(shard.load_runs(runs)), precisions, shippable=shippable)
    if json_output:
        _print_json([r.to_dict() for r in recs])
        return
    for r in recs:
        console.print(r.line(), markup=False, highlight=False)
        for reason in r.rejected:
            console.print(f"    rejected: {reason}", style="yellow", markup=False, highlight=False)
        for reason in r.not_measured:
            console.print(f"    not measured: {reason}", style="dim", markup=False, highlight=False)


def _wants_packages(file_format: str, engine: bool) -> bool:
    """True for --format pt2; a format that does not exist, or pt2 with --engine, is a usage error."""
    if file_format not in ("onnx", "pt2"):
        raise UsageError(f"--format {file_format!r}: choose onnx or pt2")
    if file_format == "pt2" and engine:
        raise UsageError("--engine builds a TensorRT engine from an ONNX file: use it with --format onnx")
    return file_format == "pt2"


def _print_exports(artifacts: Any, engines: dict[Any, Any], out: Path, json_output: bool) -> None:
    if json_output:
        _print_json(
            [a.to_dict() | ({"engine": engines[a.path]} if a.path in engines else {}) for a in artifacts]
        )
        return
    table = Table(title=f"ONNX artifacts in {out}")
    table.add_column("file", overflow="fold")
    for col in ("size", "Conv", "params", "seconds"):
        table.add_column(col, justify="right", no_wrap=True)
    for a in artifacts:
        seconds = "reused" if a.reused else f"{a.export_seconds:.1f}"
        table.add_row(a.path.name, _mib(a.size_bytes), str(a.conv_count), f"{a.parameters:,}", seconds)
    console.print(table)
    for built in engines.values():
        cached = " (from the engine cache)" if built["cache_hit"] else ""
        console.print(f"engine {built['engine']}: {_mib(built['size_bytes'])}, built in {built['build_seconds']:.1f} s{cached}",
                      markup=False, highlight=False)  # fmt: skip


def _run_checks(groups: Any) -> Any:
    from ccnbench import check as checking

    with _progress() as progress:
        task = progress.add_task("checking", total=sum(len(g.batches) for g in groups))

        def advance(group: Any, result: Any) -> None:
            progress.update(task, description=group.label, advance=1)

        return checking.run(groups, advance)


def _saved_reference(inputs: Path | None, outputs: Path | None) -> tuple[str, str] | None:
    from ccnbench.errors import UsageError

    if (inputs is None) != (outputs is None):
        raise UsageError("--load-inputs and --load-outputs go together (the outputs of those inputs)")
    return (str(inputs), str(outputs)) if inputs and outputs else None


def _print_summary(results: Any) -> None:
    """How many cases agree with an independent oracle, and a warning when some had none."""
    from ccnbench.check import unchecked_note

    graded = [r for r in results if r.status != "unavailable" and not r.is_reference]
    if graded:
        console.print(f"{sum(r.passed for r in graded)}/{len(graded)} cases agree with the oracle")
    elif not any(r.is_reference for r in results):
        console.print("nothing could run")
    note = unchecked_note(results)
    if note:
        err_console.print(f"note: {note}", style="yellow", markup=False, highlight=False)


def _print_problems(cases: Any) -> None:
    """Unavailable targets (dim) and failures (red) below a table, one line each."""
    from ccnbench import tables

    for line in tables.unavailable_lines(cases):
        console.print(line, style="dim", markup=False, highlight=False)
    for line in tables.failure_lines(cases):
        console.print(line, style="red", markup=False, highlight=False)


def _progress() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # stderr, and gone when done: stdout stays clean for --json and pipes.
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _print_json(data: Any) -> None:
    import json

    # Plain print: rich would wrap long lines and break the JSON for scripts.
    print(json.dumps(data, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    return app(args=argv, prog_name="ccnbench", standalone_mode=False) or 0
