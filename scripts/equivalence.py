"""Does a change that should not change behaviour change it? Two trees' command-line outputs, compared.

Moving files (a package re-laid out by stage) must leave every screen and file a user sees as it
was. This script runs the same ``ccnbench`` commands with two trees' code on this machine, in one
job, and compares what they print and write:

- every ``--help`` screen, byte for byte;
- ``variants``, ``env``, ``shapes``, ``check`` (text and JSON), ``export`` (tables, JSON, and each
  ONNX file's graph, initializers and ``ccnbench.*`` metadata, leaving out
  ``ccnbench.export_seconds`` and the exporter's per-node ``metadata_props``, which hold source
  paths and line numbers), ``export --format pt2`` (its description beside the package),
  ``recommend``, ``compare`` and ``report`` on the stored runs and fixtures (report.md,
  report.html and every plot byte for byte), and a few bad inputs (their one-line errors);
- what a command measures moves from call to call (latencies, memory, build and export times, and
  the digests of files stamped with their export time), so for ``bench --quick``, ``check`` and
  ``export`` those fields (``MEASURED``) and table columns (``MEASURED_COLUMNS``) are masked and
  everything else must match: agreement figures, verdicts, case keys, file names, ONNX contents.

Both trees run as plain copies (no ``.git``), with ``CCNBENCH_GIT_COMMIT`` set, so neither records
its own commit; absolute paths of the copies and of the scratch folder are replaced by ``<ROOT>``
and ``<TMP>``. Every command's exit code is compared too.

Usage::

    python scripts/equivalence.py                    # HEAD against the working tree
    python scripts/equivalence.py --base 27a1802     # a commit against the working tree
    python scripts/equivalence.py --base A --head B  # two commits
    python scripts/equivalence.py --keep /tmp/eq     # keep both trees' outputs there

Exit code 0 when every output is identical, 1 otherwise (each difference printed). About four
minutes on 2 cores (two trees, the bench and the pt2 build the longest parts).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Fields of results.json, ``--json`` output and file descriptions that a measurement fills (and a
#: file's digest and size, which change with the export time stamped in it): they differ between
#: two runs of one tree, so commands that measure or export have them masked.
MEASURED = {
    "created", "latency", "memory", "build_seconds", "transfers", "timer_overhead_ns",
    "timer_overhead_cuda_ns", "export_seconds", "sha256", "size_bytes", "artifact_bytes",
}  # fmt: skip
#: Table columns that print a measurement.
MEASURED_COLUMNS = {"seconds", "fastest ms", "p50 ms", "p99 ms", "fastest ms [95 %]", "p50 / p99 ms (procs)",
                    "memory MiB", "vs eager", "merged vs kept"}  # fmt: skip
#: Notes printed only when a measurement says so (a busy machine), wrapped over several lines.
MEASURED_NOTES = re.compile(r"^note: the machine was busy[^\n]*(?:\n(?!note:|error:)[^\n]+)*\n?", re.M)
#: A contest's id ends in a random part (unique per contest).
CONTEST_ID = re.compile(r"(/[0-9a-f]{8})$")


@dataclass(frozen=True)
class Command:
    """One ``ccnbench`` invocation and how its outputs are read: ``name`` is its folder."""

    name: str
    line: str  # the arguments as a shell would split them; ``{tmp}``: the scratch folder
    measured: bool = False  # it measures or exports: mask what the measurement decides (``MEASURED``)
    files: str | None = None  # a folder under the scratch folder whose files are compared too

    def argv(self, tmp: Path) -> list[str]:
        return shlex.split(self.line.format(tmp=tmp))


GPU_RUNS = "tests/fixtures/gpu-h200-2026-11-30/results-1-eager.json tests/fixtures/gpu-h200-2026-11-30/results-2-graphs.json"
CI_QUICK = "tests/fixtures/ci-quick-amd-epyc/a.json tests/fixtures/ci-quick-amd-epyc/b.json"
EPYCS = "results/baseline-ci/amd-epyc-f25m17 results/baseline-ci/amd-epyc-f26m2"
TWO_VIEW = "--model tests/fixtures/user_models.py:two_view --input-shape 1x10x10x10 --branches 2"
MONAI = "--model tests/fixtures/library_models.py:two_resnet10_trunks --input-shape 1x16x16x16 --branches 2"

#: Every command compared, run in the tree's folder.
COMMANDS = (
    Command("variants", "variants --preset small"),
    Command("variants-json", "variants --preset tiny --branches 4 --json"),
    Command("env", "env"),
    Command("shapes", "shapes --variant all --preset tiny"),
    Command("shapes-json", "shapes --variant model --preset tiny --json"),
    Command("export-all", "export --variant all --layout all --preset tiny --out {tmp}/export-all --json",
            measured=True, files="export-all"),
    Command("export-fp16", "export --variant model --layout merged --branches 4 --preset tiny --precision fp16 "
            "--opset 18 --out {tmp}/export-fp16", measured=True, files="export-fp16"),
    Command("export-model", f"export {TWO_VIEW} --layout all --precision fp32,fp16 --out {{tmp}}/export-model",
            measured=True, files="export-model"),
    Command("export-monai", f"export {MONAI} --layout all --out {{tmp}}/export-monai",
            measured=True, files="export-monai"),
    Command("export-pt2", "export --format pt2 --variant decision --layout merged --preset tiny "
            "--out {tmp}/export-pt2 --json", measured=True, files="export-pt2"),
    Command("check", "check --preset tiny --variant all --layout all --targets torch:cpu,ort:cpu,openvino:cpu "
            "--batch 1,2 --artifacts {tmp}/art", measured=True),
    Command("check-json", "check --preset tiny --variant multitask --precision fp16 --tol regression=1e-2,1e-2 "
            "--targets torch:cpu,ort:cpu --json --artifacts {tmp}/art", measured=True),
    Command("check-model", f"check {TWO_VIEW} --targets torch:cpu,ort:cpu --batch 1 --artifacts {{tmp}}/art",
            measured=True),
    Command("check-onnx", "check --onnx {tmp}/fixture.onnx --targets ort:cpu --batch 1 --artifacts {tmp}/art",
            measured=True),
    Command("bench-quick", "bench --preset tiny --variant model --targets torch:cpu,ort:cpu --batch 1,8 --quick "
            "--out {tmp}/bench --artifacts {tmp}/art --no-report", measured=True, files="bench"),
    Command("recommend", "recommend results/baseline-cpu"),
    Command("recommend-shippable-json", "recommend results/baseline-cpu --shippable --json"),
    Command("recommend-gpu", f"recommend {GPU_RUNS}"),
    Command("recommend-ci-quick", "recommend tests/fixtures/ci-quick-amd-epyc/a.json --margin 5%"),
    Command("compare-fixtures", f"compare {CI_QUICK} --threshold 15%"),
    Command("compare-fixtures-json", f"compare {CI_QUICK} --by target --json"),
    Command("compare-machines", f"compare {EPYCS}"),
    Command("compare-forced-json", f"compare {EPYCS} --force-speed --json"),
    Command("compare-pytest-benchmark", "compare results/bench-ci/benchmarks.json results/bench-ci/benchmarks.json"),
    Command("report-baseline", "report results/baseline-cpu --out {tmp}/report-baseline", files="report-baseline"),
    Command("report-combined", "report results/baseline-cpu results/baseline-ci/intel-xeon "
            "--out {tmp}/report-combined", files="report-combined"),
    Command("report-gpu", f"report {GPU_RUNS} --out {{tmp}}/report-gpu", files="report-gpu"),
    Command("error-variant", "check --variant nope"),
    Command("error-compare", "compare results/baseline-cpu {tmp}/missing"),
    Command("error-model", "export --model tests/fixtures/user_models.py:nope --input-shape 1x10x10x10"),
)  # fmt: skip


def help_screens(python: str, code: Path, env: dict[str, str]) -> list[tuple[str, ...]]:
    """``--help`` of the root and of every command (and sub-command), named as the tree's CLI names them."""
    script = (
        "import typer\nfrom ccnbench.cli import app\n"
        "def walk(cmd, path):\n"
        "    yield path\n"
        "    for name, sub in sorted(getattr(cmd, 'commands', {}).items()):\n"
        "        yield from walk(sub, path + [name])\n"
        "for p in walk(typer.main.get_command(app), []): print(' '.join(p))\n"
    )
    out = subprocess.run(
        [python, "-c", script], cwd=code, env=env, capture_output=True, text=True, check=True
    )
    return [(*line.split(), "--help") for line in out.stdout.splitlines()]


def capture(code: Path, out: Path, scratch: Path) -> None:
    """Run every command with ``code``'s package and write what it printed and wrote under ``out``."""
    out.mkdir(parents=True)
    scratch.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(code), "CCNBENCH_GIT_COMMIT": "equivalence", "COLUMNS": "120",
           "TERM": "dumb", "NO_COLOR": "1", "PYTHONHASHSEED": "0"}  # fmt: skip
    env.pop("CCNBENCH_DEBUG", None)
    python = sys.executable
    where = subprocess.run([python, "-c", "import ccnbench; print(ccnbench.__file__)"], cwd=code, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if not Path(where).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"ccnbench imported from {where}, not from {code}")
    paths = {str(code.resolve()): "<ROOT>", str(scratch.resolve()): "<TMP>"}

    def clean(text: str) -> str:
        for path, mark in sorted(paths.items(), key=lambda p: -len(p[0])):
            text = text.replace(path, mark)
        return text

    def run(name: str, argv: list[str]) -> tuple[str, str, int]:
        start = time.monotonic()
        proc = subprocess.run(
            [python, "-m", "ccnbench", *argv], cwd=code, env=env, capture_output=True, text=True
        )
        print(f"  {name}: exit {proc.returncode} in {time.monotonic() - start:.1f} s", flush=True)
        return clean(proc.stdout), clean(_without_progress(proc.stderr)), proc.returncode

    help_dir = out / "help"
    help_dir.mkdir()
    for argv in help_screens(python, code, env):
        stdout, stderr, rc = run(" ".join(argv), list(argv))
        (help_dir / ("_".join(argv[:-1]) or "ccnbench")).write_text(f"exit {rc}\n{stdout}{stderr}")

    _fixture_onnx(python, code, env, scratch / "fixture.onnx")
    for command in COMMANDS:
        stdout, stderr, rc = run(command.name, command.argv(scratch))
        folder = out / command.name
        folder.mkdir()
        if command.measured:
            try:
                stdout = json.dumps(_masked(json.loads(stdout)), indent=1, sort_keys=True) + "\n"
            except json.JSONDecodeError:
                stdout = _mask_table(stdout)
            stderr = MEASURED_NOTES.sub("", stderr)
        (folder / "exit").write_text(f"{rc}\n")
        (folder / "stdout").write_text(stdout)
        (folder / "stderr").write_text(stderr)
        if command.files:
            _capture_files(scratch / command.files, folder / "files", clean, command.measured)


def _fixture_onnx(python: str, code: Path, env: dict[str, str], path: Path) -> None:
    """A user's ONNX file that neither tree made: a tiny two-input network exported by torch itself."""
    script = (
        "import sys, torch\n"
        "torch.manual_seed(0)\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.a = torch.nn.Conv3d(1, 2, 3); self.b = torch.nn.Conv3d(1, 2, 3)\n"
        "    def forward(self, x, y):\n"
        "        return torch.cat([self.a(x), self.b(y)], 1).flatten(1)\n"
        "x = torch.randn(1, 1, 6, 6, 6)\n"
        "torch.onnx.export(Net().eval(), (x, x), sys.argv[1], input_names=['x', 'y'], output_names=['out'],\n"
        "                  dynamic_axes={'x': {0: 'batch'}, 'y': {0: 'batch'}, 'out': {0: 'batch'}}, dynamo=False)\n"
    )
    subprocess.run([python, "-c", script, str(path)], cwd=code, env=env, check=True, capture_output=True)


def _without_progress(text: str) -> str:
    """Progress bars redraw with elapsed times; only the other lines of stderr are compared."""
    return "".join(line for line in text.splitlines(keepends=True) if not re.search(r"\d+:\d\d:\d\d", line))


def _mask_table(text: str) -> str:
    """Printed tables with their measured columns masked (``MEASURED_COLUMNS``), one line per row
    with the cells joined: a masked cell changes a column's width, so rows wrap differently, and
    a title is centred over the table. Lines outside tables are kept as they are, stripped."""
    lines: list[str] = []
    header: list[str] = []
    announced: list[str] = []
    row: list[str] = []

    def flush() -> None:
        if row:
            cells = [("<measured>" if name in MEASURED_COLUMNS and cell not in ("", "-", "ref") else cell)
                     for name, cell in zip(header, row)]  # fmt: skip
            lines.append(" | ".join(cells))
            row.clear()

    for line in text.splitlines():
        bar = "┃" if "┃" in line else "│" if "│" in line else None
        if bar is None:
            flush()
            if line.strip().startswith("┏"):  # a table's top: its header follows
                header = []
            if line.strip() and not set(line.strip()) <= set("┏┓┗┛┡┩└┘┌┐├┤┼┬┴━─╇╈╋┳┻"):
                lines.append(line.strip())
            continue
        cells = [" ".join(c.split()) for c in line.strip().strip(bar).split(bar)]
        if bar == "┃":  # a header, perhaps over several lines (a column's name sits on the last)
            header = [f"{a} {c}".strip() for a, c in zip(header, cells)] if header else cells
            continue
        if cells[0] or not row:
            flush()
            if header and header != announced:
                lines.append("columns: " + " | ".join(header))
                announced[:] = header
            row.extend(cells)
        else:
            row[:] = [f"{a} {c}".strip() for a, c in zip(row, cells)]
    flush()
    return "\n".join(lines) + "\n"


def _capture_files(folder: Path, out: Path, clean: Callable[[str], str], measured: bool) -> None:
    """Each file the command wrote, in a form that is equal when the files are equivalent."""
    out.mkdir()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        if path.suffix == ".onnx":
            text = _onnx_identity(path)
        elif path.suffix == ".json" or path.name.endswith(".jsonl"):
            if path.name.endswith(".jsonl"):
                continue  # the journal is compacted into results.json, compared below
            data = json.loads(path.read_text())
            text = json.dumps(_masked(data) if measured else data, indent=1, sort_keys=True)
            text = clean(text)
        elif path.suffix in (".md", ".html", ".txt", ".log", ".csv"):
            if path.suffix == ".log":
                continue  # worker logs hold timings
            text = clean(path.read_text())
        elif path.suffix == ".pt2":
            continue  # a native build: its description (.pt2.json) is compared instead
        else:
            text = f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}\n"
        target = out / (name.replace("/", "__") + ".txt")
        target.write_text(text)


def _masked(data: Any) -> Any:
    """``data`` with the ``MEASURED`` fields masked, contest ids without their random part, and
    lists of cases in key order (a sweep appends them in the order its shuffled rounds end)."""
    if isinstance(data, dict):
        masked = {k: ("<measured>" if k in MEASURED else _masked(v)) for k, v in data.items()}
        if isinstance(masked.get("contest"), str):
            masked["contest"] = CONTEST_ID.sub("/<id>", masked["contest"])
        return masked
    if isinstance(data, list):
        items = [_masked(v) for v in data]
        if all(isinstance(v, dict) and "key" in v for v in items):
            items.sort(key=lambda v: json.dumps(v["key"], sort_keys=True))
        return items
    return data


def _onnx_identity(path: Path) -> str:
    """The graph, initializers and ``ccnbench.*`` metadata of an ONNX file, as a digest and a summary."""
    import onnx

    model = onnx.load(str(path))
    for graph in _graphs(model.graph):
        for node in graph.node:
            del node.metadata_props[:]
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]
    kept = [p for p in model.metadata_props if p.key != "ccnbench.export_seconds"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    meta = {p.key: p.value for p in model.metadata_props}
    return json.dumps({"sha256": digest, "ops": ops, "metadata": meta}, indent=1, sort_keys=True)


def _graphs(graph: Any) -> list[Any]:
    import onnx

    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found += _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    found += _graphs(g)
    return found


def tree(ref: str | None, into: Path) -> Path:
    """A plain copy of a commit (``ref``) or of the working tree (``None``: tracked and untracked,
    ignored files left out) in ``into``."""
    into.mkdir(parents=True)
    if ref is None:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"],
                                capture_output=True, check=True).stdout  # fmt: skip
        for name in filter(None, listed.decode().split("\0")):
            source = ROOT / name
            if source.is_file():
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, into / name)
        return into
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def compare(before: Path, after: Path) -> list[str]:
    """The outputs that differ, each with a short diff; empty when all are identical."""
    names = sorted({p.relative_to(before) for p in before.rglob("*") if p.is_file()}
                   | {p.relative_to(after) for p in after.rglob("*") if p.is_file()})  # fmt: skip
    differences = []
    for name in names:
        a, b = before / name, after / name
        if not a.is_file() or not b.is_file():
            differences.append(f"{name}: only in {'after' if b.is_file() else 'before'}")
            continue
        if a.read_bytes() != b.read_bytes():
            diff = difflib.unified_diff(a.read_text().splitlines(), b.read_text().splitlines(), "before", "after",
                                        lineterm="", n=1)  # fmt: skip
            differences.append(f"{name}:\n" + "\n".join(list(diff)[:40]))
    return differences


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="the commit to compare against (default HEAD)")
    parser.add_argument("--head", default=None, help="a commit instead of the working tree")
    parser.add_argument("--keep", type=Path, default=None, help="keep both trees' outputs in this folder")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ccnbench-equivalence-"))
    if args.keep and work.exists():
        shutil.rmtree(work)
    outputs = {}
    for side, ref in (("before", args.base), ("after", args.head)):
        start = time.monotonic()
        print(f"{side}: {ref or 'working tree'}", flush=True)
        code = tree(ref, work / side / "tree")
        outputs[side] = work / side / "out"
        capture(code, outputs[side], work / side / "tmp")
        count = sum(1 for p in outputs[side].rglob("*") if p.is_file())
        print(f"{side}: {count} outputs in {time.monotonic() - start:.0f} s", flush=True)
    differences = compare(outputs["before"], outputs["after"])
    total = sum(1 for p in outputs["before"].rglob("*") if p.is_file())
    for text in differences:
        print(text)
    print(f"equivalence: {total} outputs compared, {total - len(differences)} identical, {len(differences)} differ"
          + (f" (kept in {work})" if args.keep else ""))  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
