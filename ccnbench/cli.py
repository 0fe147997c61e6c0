"""The `ccnbench` command line. Commands parse options and call the library; no logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from ccnbench import __version__
from ccnbench.errors import CcnbenchError

try:  # typer >= 0.24 vendors click; older releases (the GPU machine's) depend on it
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException, UsageError

console = Console()
err_console = Console(stderr=True)


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
    variant: Annotated[
        str,
        typer.Option(
            "--variant",
            "-v",
            help="Variant(s): early, feature, model, decision, multitask, a comma list or all.",
        ),
    ] = "all",
    layout: Layout = "kept",
    branches: BranchList = None,
    preset: Preset = "small",
    input_mode: InputMode = "separate",
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16, a comma list or all.")] = "fp32",
    io: Annotated[
        str, typer.Option("--io", help="I/O type of fp16 graphs: fp32 (casts inside) or fp16.")
    ] = "fp32",
    opset: Annotated[
        int, typer.Option("--opset", help="ONNX opset (default 18: read by ONNX Runtime and TensorRT 10/11).")
    ] = 18,
    seed: Seed = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the .onnx files.")] = Path(
        "artifacts"
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Export again even if an identical artifact exists.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Export variants to validated ONNX files (branches kept or merged, fp32 or fp16)."""
    from ccnbench import selection
    from ccnbench.export import PRECISIONS, export

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
    if json_output:
        _print_json([a.to_dict() for a in artifacts])
        return
    table = Table(title=f"ONNX artifacts in {out}")
    table.add_column("file", overflow="fold")
    for col in ("size", "Conv", "params", "seconds"):
        table.add_column(col, justify="right", no_wrap=True)
    for a in artifacts:
        seconds = "reused" if a.reused else f"{a.export_seconds:.1f}"
        table.add_row(a.path.name, _mib(a.size_bytes), str(a.conv_count), f"{a.parameters:,}", seconds)
    console.print(table)


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
