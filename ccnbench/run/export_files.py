"""What ``ccnbench export`` makes, and the tables that list it.

The command asks for many files at once: every variant × layout × precision as an ONNX file
(``onnx_export.export``) or a ``.pt2`` package (``aoti_build.package``), a user's module in each layout
(``export_model.export_model``), and a TensorRT engine beside each ONNX file. ``make`` checks
every option first, then makes each file as a ``Job`` (what to show while it runs, and the call
that makes it) through the runner the command line gives it (its progress bar).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from ccnbench.backends import aoti_build
from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.run import selection

FILE_FORMATS = ("onnx", "pt2")


@dataclass(frozen=True)
class Job:
    """One file to make: ``what`` is shown while ``run`` makes it (``run`` may show more through
    the callback it is given)."""

    what: str
    run: Callable[[Callable[[str], None]], Any]


# Runs jobs one after another under a title (the command line's progress bar); their results in order.
RunJobs = Callable[[str, Sequence[Job]], list[Any]]


@dataclass(frozen=True)
class Request:
    """What ``ccnbench export`` was asked for: its options, None where not given."""

    variant: str | None
    layout: str
    branches: Any
    preset: str | None
    input_mode: str | None
    precision: str
    io: str
    opset: int
    seed: int | None
    model: str | None
    input_shape: str | None
    out: Path
    force: bool
    engine: bool
    engine_batch: str
    file_format: str
    device: str
    merge: str | None = None
    calibration: Path | None = None


@dataclass(frozen=True)
class Made:
    """What an export made: its JSON, and what to print (tables, or lines with a style)."""

    json: Any
    shown: list[tuple[Any, str | None]]
    passed: bool = True


def make(req: Request, run_jobs: RunJobs) -> Made:
    """Every file the request asks for; every option is checked before the first one is written."""
    packages = wants_packages(req.file_format, req.engine)
    if req.model is not None:
        refuse_variant_flags({"--variant": req.variant, "--preset": req.preset, "--input-mode": req.input_mode,
                              "--seed": req.seed})  # fmt: skip
        if req.calibration is not None:
            raise UsageError(
                "--calibration calibrates the built-in variants' int8 files; --model's are calibrated on seeded inputs"
            )
        return _made_from_model(req, engine_batches(req.engine, req.engine_batch), run_jobs)
    if req.input_shape is not None:
        raise UsageError(
            "--input-shape goes with --model; ccnbench's variants take their shape from --preset"
        )
    if req.merge is not None:
        raise UsageError("--merge says what the graph pass merges in your module; it goes with --model")
    chosen = (req.variant or "all", req.layout, req.branches, req.preset or "small",
              req.input_mode or "separate", req.precision, req.seed or 0)  # fmt: skip
    if packages:
        made = run_jobs("building .pt2 packages", package_jobs(*chosen, req.out, req.force, req.device))
        return Made([p.to_dict() for p in made], [(package_table(made, req.out), None)])
    batches = engine_batches(req.engine, req.engine_batch)
    notes: list[tuple[Any, str | None]] = []
    jobs = onnx_jobs(*chosen, req.opset, req.out, req.io, req.force, req.calibration,
                     lambda line: notes.append((line, "yellow")))  # fmt: skip
    artifacts = run_jobs("exporting", jobs)
    engines = dict(run_jobs("building TensorRT engines", engine_jobs(artifacts, batches, req.out)))
    shown = (
        [(onnx_table(artifacts, req.out), None)] + notes + [(engine_line(b), None) for b in engines.values()]
    )
    return Made(onnx_json(artifacts, engines), shown)


def _made_from_model(req: Request, batches: tuple[int, ...] | None, run_jobs: RunJobs) -> Made:
    """``export --model``: the files graded against the kept module, engines beside them, and
    what the graph pass merged."""
    from ccnbench.run.check import problem_lines

    def export(note: Callable[[str], None]) -> Any:
        return user_model(req.model or "", req.input_shape, req.branches, req.layout, req.precision, req.io,
                          req.opset, req.out, req.force, req.file_format, req.device, note, req.merge)  # fmt: skip

    (exported,) = run_jobs("exporting and checking against the float64 kept module", [Job("", export)])
    engines = dict(run_jobs("building TensorRT engines", engine_jobs([f.artifact for f in exported.files], batches, req.out)))  # fmt: skip
    cases = [r for f in exported.files for r in f.validation]
    shown = [(user_table(exported, req.out), None), *merge_lines(exported)]
    shown += problem_lines(cases)
    shown += [(engine_line(b, timed=False), None) for b in engines.values()]
    return Made(user_json(exported, engines), shown, exported.passed)


def wants_packages(file_format: str, engine: bool) -> bool:
    """True for --format pt2; a format that does not exist, or pt2 with --engine, is a usage error."""
    if file_format not in FILE_FORMATS:
        raise UsageError(f"--format {file_format!r}: choose onnx or pt2")
    if file_format == "pt2" and engine:
        raise UsageError("--engine builds a TensorRT engine from an ONNX file: use it with --format onnx")
    return file_format == "pt2"


def refuse_variant_flags(given: Mapping[str, Any]) -> None:
    """``--model`` exports the user's module as it is: flags that describe ccnbench's variants
    (flag -> value, None when not given) are a usage error naming the first."""
    named = [flag for flag, value in given.items() if value is not None]
    if named:
        raise UsageError(
            f"{named[0]} describes ccnbench's own variants; --model exports your module as it is"
        )


def engine_batches(engine: bool, text: str) -> tuple[int, ...] | None:
    """``--engine``'s batch sizes, checked before any export: asking for an engine that cannot be
    built is an error, not a note after the files are written. None without ``--engine``."""
    from ccnbench.backends.tensorrt import TensorRTBackend

    if not engine:
        return None
    reason = TensorRTBackend().availability("cuda")
    if reason:
        raise CcnbenchError(f"--engine: {reason}")
    return selection.integers(text, "--engine-batch")


def check_pt2_device(device: str) -> None:
    """A .pt2 package is built for one device, which must exist and have a working compiler here."""
    from ccnbench.backends.aoti import AotiBackend

    if device not in aoti_build.DEVICES:
        raise UsageError(
            f"--device {device!r}: a .pt2 package is built for {' or '.join(aoti_build.DEVICES)}"
        )
    reason = AotiBackend().availability(device)
    if reason:
        raise CcnbenchError(f"--format pt2: {reason}")


def onnx_jobs(
    variant: str, layout: str, branches: Any, preset: str, input_mode: str, precision: str, seed: int,
    opset: int, out: Path, io: str, force: bool, calibration: Path | None = None,
    note: Callable[[str], None] = lambda _: None,
) -> list[Job]:  # fmt: skip
    """An ONNX file per variant × layout × precision, each validated as it is written."""
    from ccnbench.formats.int8 import is_int8
    from ccnbench.formats.onnx_export import PRECISIONS, export

    specs = selection.specs(preset, variant, branches, input_mode, seed)
    precisions = selection.precisions(precision, PRECISIONS)
    check_calibration(precisions, calibration)
    if any(is_int8(p) for p in precisions) and calibration is None:
        note(
            "int8: calibrated on 32 seeded random inputs (not the evaluation inputs); --calibration FILE.npz for yours"
        )
    return [
        Job(f"{spec.label} {lay} {prec}",
            lambda _, s=spec, la=lay, p=prec: export(s, la, p, opset=opset, out_dir=out, io=io, force=force,
                                                     calibration=calibration))
        for spec in specs
        for lay in selection.layouts(layout)
        for prec in precisions
    ]  # fmt: skip


def check_calibration(precisions: Sequence[str], calibration: Path | None) -> None:
    """``--calibration`` calibrates int8 files: without one asked for it is a usage error."""
    from ccnbench.formats.int8 import is_int8

    if calibration is not None and not any(is_int8(p) for p in precisions):
        raise UsageError("--calibration calibrates int8 files: use it with --precision int8")


def package_jobs(
    variant: str, layout: str, branches: Any, preset: str, input_mode: str, precision: str, seed: int,
    out: Path, force: bool, device: str,
) -> list[Job]:  # fmt: skip
    """``export --format pt2``: AOTInductor packages, built once and reused like ONNX files."""
    from ccnbench.source import ModelSource

    check_pt2_device(device)
    specs = selection.specs(preset, variant, branches, input_mode, seed)
    precisions = selection.choices(precision, aoti_build.PRECISIONS[device], "precision")
    return [
        Job(f"{spec.label} {lay} {prec} (.pt2, {device})",
            lambda _, s=spec, la=lay, p=prec: aoti_build.package(
                ModelSource.from_spec(s, la), device, p, out, force=force))
        for spec in specs
        for lay in selection.layouts(layout)
        for prec in precisions
    ]  # fmt: skip


def engine_jobs(artifacts: Sequence[Any], batches: tuple[int, ...] | None, out: Path) -> list[Job]:
    """A TensorRT engine beside each ONNX file (``--engine``); each job returns (file path, engine
    description). None as ``batches`` (no ``--engine``): no jobs."""
    from ccnbench.backends import BuildOptions
    from ccnbench.backends.tensorrt import export_engine

    if batches is None:
        return []
    sizes = batches

    def build(a: Any) -> tuple[Path, dict[str, Any]]:
        options = BuildOptions(precision=a.precision, batch_sizes=sizes, artifacts_dir=out, io=a.io)
        return a.path, export_engine(a, options)

    return [Job(f"engine for {a.path.name}", lambda _, a=a: build(a)) for a in artifacts]


def user_model(
    model: str, input_shape: str | None, branches: Any, layout: str, precision: str, io: str, opset: int,
    out: Path, force: bool, file_format: str, device: str, on_file: Callable[[str], None], merge: str | None = None,
) -> Any:  # fmt: skip
    """``export --model``: the factory's module in each layout, written and graded in float64."""
    from ccnbench.formats.onnx_export import PRECISIONS
    from ccnbench.run.export_model import export_model

    if file_format == "pt2":
        if io != "fp32":
            raise UsageError("--io sets an ONNX file's input type; a .pt2 package takes float32 inputs")
        check_pt2_device(device)
    if file_format == "pt2":
        precisions = selection.choices(precision, aoti_build.PRECISIONS[device], "precision")
    else:
        precisions = selection.precisions(precision, PRECISIONS)
    sources = selection.sources(
        layouts_=layout, branches=branches, model=model, shape=input_shape, merge=merge
    )
    return export_model(sources, precisions, out, file_format=file_format, device=device, io=io, opset=opset,
                        force=force, on_file=on_file)  # fmt: skip


def onnx_json(artifacts: Sequence[Any], engines: Mapping[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    """``export --json``: each ONNX file, with its engine if one was built."""
    return [a.to_dict() | ({"engine": engines[a.path]} if a.path in engines else {}) for a in artifacts]


def user_json(exported: Any, engines: Mapping[Path, dict[str, Any]]) -> dict[str, Any]:
    """``export --model --json``: the files with their validation, each with its engine if built."""
    data = exported.to_dict()
    for entry, file in zip(data["files"], exported.files):
        if file.artifact.path in engines:
            entry["engine"] = engines[file.artifact.path]
    return data


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def onnx_table(artifacts: Sequence[Any], out: Path) -> Table:
    table = Table(title=f"ONNX artifacts in {out}")
    table.add_column("file", overflow="fold")
    for col in ("size", "Conv", "params", "seconds"):
        table.add_column(col, justify="right", no_wrap=True)
    for a in artifacts:
        seconds = "reused" if a.reused else f"{a.export_seconds:.1f}"
        table.add_row(a.path.name, mib(a.size_bytes), str(a.conv_count), f"{a.parameters:,}", seconds)
    return table


def package_table(packages: Sequence[Any], out: Path) -> Table:
    table = Table(title=f".pt2 packages in {out}")
    table.add_column("file", overflow="fold")
    for col in ("size", "machine", "seconds"):
        table.add_column(col, justify="right", no_wrap=True)
    for p in packages:
        seconds = "reused" if p.reused else f"{p.build_seconds:.1f}"
        table.add_row(p.path.name, mib(p.size_bytes), p.machine, seconds)
    return table


def user_table(exported: Any, out: Path) -> Table:
    """The files of ``export --model`` with their Conv counts and agreement with the kept module."""
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
        table.add_row(a.path.name, a.layout, mib(a.size_bytes), conv, seconds, max_abs, ", ".join(verdicts))
    return table


def merge_lines(exported: Any) -> list[tuple[str, str | None]]:
    """(line, style): what the graph pass merged in each user's source, and what stayed kept."""
    lines: list[tuple[str, str | None]] = []
    for source, note in exported.merges():
        if note.get("merged"):
            lines += [
                (f"merged ({source.num_inputs} branches): {line}", None)
                for line in note["description"].splitlines()
            ]
    for source, reason in exported.not_merged:
        lines.append(
            (
                f"merged ({source.num_inputs} branches): not written, the branches stay kept: {reason}",
                "yellow",
            )
        )
    return lines  # fmt: skip


def engine_line(built: dict[str, Any], timed: bool = True) -> str:
    """One engine beside its file: size, and (``timed``) its build time or the cache it came from."""
    if not timed:
        return f"engine {built['engine']}: {mib(built['size_bytes'])}"
    cached = " (from the engine cache)" if built["cache_hit"] else ""
    return f"engine {built['engine']}: {mib(built['size_bytes'])}, built in {built['build_seconds']:.1f} s{cached}"
