"""`ccnbench report`: report.md, a self-contained report.html and PNG plots from one or more runs.

The report is built once as a list of blocks (headings, text, tables, images) and rendered
twice, so the markdown and the HTML never say different things.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ccnbench import fileio, shard
from ccnbench.answers import plots
from ccnbench.answers.derived import all_cases, index, load_note, noise_warnings
from ccnbench.answers.recommend import recommend
from ccnbench.answers.roofline_plot import roofline_plots
from ccnbench.answers.stats import EQUIVALENCE, TIE_CONFIDENCE, resolve_hint
from ccnbench.answers.tables import (
    FASTEST,
    GFLOPS,
    LEGEND,
    LOAD,
    P50,
    P99,
    RATE,
    ROOF,
    ROOF_LEGEND,
    case_cells,
    failure_lines,
    unavailable_lines,
)
from ccnbench.errors import CcnbenchError
from ccnbench.results import CaseResult, RunResult


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class TableBlock:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right: frozenset[int] = field(default_factory=frozenset)  # right-aligned column indexes


@dataclass(frozen=True)
class Image:
    path: Path
    caption: str


Block = Heading | Text | Bullets | TableBlock | Image


def write_report(run_dirs: Sequence[Path | str], out_dir: Path | str | None = None) -> Path:
    """Write report.md, report.html and plots/ for ``run_dirs`` into ``out_dir`` (default: the first run)."""
    if not run_dirs:
        raise CcnbenchError("no run directories given")
    runs = shard.load_runs(run_dirs)
    out = Path(out_dir) if out_dir is not None else Path(run_dirs[0])
    if out.suffix == ".json":
        out = out.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CcnbenchError(f"cannot create report directory {out}: {exc.strerror}") from exc
    blocks = build(runs, out / "plots")
    fileio.write_text(out / "report.md", render_markdown(blocks, out))
    fileio.write_text(out / "report.html", render_html(blocks))
    return out / "report.md"


def build(runs: Sequence[RunResult], plot_dir: Path) -> list[Block]:
    cases = all_cases(runs)
    blocks: list[Block] = [Heading("ccnbench report", 1)]
    blocks.append(
        Text(
            f"{len(cases)} cases from {len(runs)} run(s). Latencies are per-iteration samples (CUDA events on the "
            "GPU, perf_counter_ns on the CPU) after warm-up, timed in several fresh processes. A format's own "
            "speed is its fastest call (the geometric mean over its undisturbed processes of each one's fastest call), with its "
            "95 % interval over processes, and the samples/s and GFLOP/s at it: on a shared machine noise only "
            "adds time, so this is the figure a second run repeats, and formats are compared by it, per process. "
            "The p50 and p99 are what a caller waits under this host's load, with their range over processes: they "
            "move with that load from one run to the next far more than the format's own speed does. Every case "
            "is also checked against the float64 PyTorch oracle, so a fast but wrong format never wins."
        )
    )
    blocks += _environment(runs)
    blocks += _recommendations(cases)
    blocks += _plots(cases, plot_dir)
    blocks += _merges(cases)
    blocks += _per_model(cases)
    blocks += _problems(cases)
    return blocks


# --- sections -------------------------------------------------------------------------------------


def _environment(runs: Sequence[RunResult]) -> list[Block]:
    rows = []
    for run in runs:
        env = run.environment
        gpu = "; ".join(
            f"{g.name} (driver {g.driver}, {g.memory_mib} MiB, SM {g.sm_clock_mhz}/{g.max_sm_clock_mhz} MHz)"
            for g in env.gpus
        )
        overhead = f"{env.timer_overhead_ns:.0f} ns" if env.timer_overhead_ns is not None else "-"
        if env.timer_overhead_cuda_ns is not None:
            overhead += f" (CUDA events {env.timer_overhead_cuda_ns / 1e3:.1f} µs)"
        rows.append(
            (
                run.run_id,
                run.created,
                f"{env.cpu}, {env.cpu_cores_physical} cores, {env.threads} threads",
                gpu or "none",
                f"torch {env.torch}{' (CUDA ' + env.torch_cuda + ')' if env.torch_cuda else ''}, "
                f"onnxruntime {env.onnxruntime} ({', '.join(p.replace('ExecutionProvider', '') for p in env.onnxruntime_providers)}), "
                f"tensorrt {env.tensorrt if not env.tensorrt.startswith('unavailable') else 'unavailable'}",
                f"{env.ccnbench} @ {env.git_commit or '?'}",
                overhead,
                "yes" if run.complete else "no (resume it)",
            )
        )
    headers = ("run", "created", "CPU", "GPU", "software", "ccnbench", "timer overhead", "complete")
    return (
        [Heading("Environment"), TableBlock(headers, tuple(rows))]
        + [Text(f"`{run.run_id}`: `{run.environment.command}`") for run in runs]
        + [Text(line) for line in map(_mixed_machines_note, runs) if line]
    )


def _mixed_machines_note(run: RunResult) -> str:
    """For a run combined from shards measured on different machines (the table shows only the
    first shard's), which shard had which machine; '' otherwise."""
    mixed = shard.mixed_machines(run)
    if mixed is None:
        return ""
    return (
        f"Note: `{run.run_id}`: its {mixed.reason()}: {mixed.each()}. The table shows the first shard's "
        "machine. Each contest ran within one shard, so the ratios within it hold; `compare` judges no "
        "speed against this run."
    )


def _recommendations(cases: Sequence[CaseResult]) -> list[Block]:
    recs = recommend(cases)
    if not recs:
        return []
    by_key = index(cases)
    rows = []
    for r in recs:
        if r.best is None:
            rows.append((r.model, str(r.batch), r.device, "nothing passed", "", "", "", "", ""))
            continue
        ratio = r.runner_up_ratio
        runner = "-"
        if r.undecided is not None and r.undecided_ratio is not None:
            runner = f"{r.undecided.label} ({r.undecided_ratio.format()} of the fastest, INCONCLUSIVE: a tie would ship it)"
        elif r.runner_up and ratio is not None:
            said = {"tie": "tie: simpler shipped" if r.tie_note else "tie", "inconclusive": "INCONCLUSIVE"}
            runner = f"{r.runner_up.label} ({ratio.format()}, {said.get(r.verdict, r.verdict)})"
        cells = case_cells(r.best.case, by_key)
        rows.append(
            (
                r.model,
                str(r.batch),
                r.device,
                r.best.label,
                cells[FASTEST],
                cells[ROOF],
                cells[LOAD],
                runner,
                "; ".join(r.rejected) or "-",
            )
        )
    headers = ("model", "batch", "device", "ship", FASTEST, ROOF, LOAD, "runner-up", "faster but rejected")
    unsettled = tuple(
        f"{r.model} batch {r.batch} on {r.device}: inconclusive; {resolve_hint(r.open_ratio)}"
        for r in recs
        if r.inconclusive
    )
    return [
        Heading("Which format to ship"),
        Text(
            "The fastest format (target, layout, precision) whose outputs agree with the oracle, by its fastest "
            "call. The runner-up's time over the shipped one's (fastest calls, paired by process): a tie when "
            f"its {TIE_CONFIDENCE:.0%} interval lies inside "
            f"±{EQUIVALENCE:.0%} (two one-sided tests), inconclusive when the 95 % interval holds parity and the ratio is "
            "not shown inside the margin (the faster point estimate is shipped), or when a format simpler than the one "
            "shipped, which a tie would ship, is neither shown inside the margin of the fastest nor beyond it (that "
            "format is named in the runner-up column)."
        ),
        TableBlock(headers, tuple(rows), frozenset({1, 4, 5, 6})),
        Text(f"Legend: {LEGEND}. {ROOF_LEGEND}"),
    ] + ([Bullets(unsettled)] if unsettled else [])


def _plots(cases: Sequence[CaseResult], plot_dir: Path) -> list[Block]:
    made = [
        (
            plots.latency_vs_batch(cases, plot_dir / "latency_vs_batch.png"),
            "Own speed (fastest call) against batch size",
        ),
        (plots.merged_speedup_plot(cases, plot_dir / "merged_vs_kept.png"), "Merged vs kept speed-up"),
        (
            plots.best_target_plot(cases, plot_dir / "best_target.png"),
            "Eager PyTorch vs the best passing format: own speed and figures under this host's load",
        ),
        (plots.error_plot(cases, plot_dir / "error_vs_tolerance.png"), "Error against the float64 oracle"),
        *(
            (
                path,
                f"Roofline on {device}: the shipped format of each model and batch against the measured roofs",
            )
            for device, path in roofline_plots(recommend(cases), plot_dir)
        ),
    ]
    blocks: list[Block] = [Heading("Plots")]
    blocks += [Image(path, caption) for path, caption in made if path is not None]
    return blocks


REPORT_COLUMNS = (FASTEST, RATE, GFLOPS, ROOF, P50, P99, "memory MiB", "build s", "max abs err", "tolerance",
                  "verdict", "vs eager", "merged vs kept", "noise")  # fmt: skip


def _per_model(cases: Sequence[CaseResult]) -> list[Block]:
    by_key = index(cases)
    blocks: list[Block] = [Heading("Every case"), Text(f"Legend: {LEGEND}. {ROOF_LEGEND}")]
    headers = ("layout", "target", "prec", "batch", *REPORT_COLUMNS)
    numeric = {
        i
        for i, h in enumerate(headers)
        if h not in ("layout", "target", "prec", "tolerance", "verdict", "vs eager", "merged vs kept")
    }
    for model in sorted({c.key.model for c in cases}):
        here = sorted(
            (c for c in cases if c.key.model == model and c.status != "unavailable"),
            key=lambda c: (c.key.precision, c.key.batch, c.key.target, c.key.layout),
        )
        if not here:
            continue
        rows = []
        for c in here:
            cells = case_cells(c, by_key)
            rows.append(
                (
                    c.key.layout,
                    c.key.target_label,
                    c.key.precision,
                    str(c.key.batch),
                    *(cells[h] for h in REPORT_COLUMNS),
                )
            )
        blocks += [Heading(model, 3), TableBlock(headers, tuple(rows), frozenset(numeric))]
    return blocks


def _merges(cases: Sequence[CaseResult]) -> list[Block]:
    """What the merged layout is, one line per model where there is something to say: what the
    graph pass merged in a user's model, or why the merged layout runs the kept graph."""
    lines = {}
    for c in cases:
        note = c.details.get("merge")
        if isinstance(note, dict) and c.key.model not in lines:
            what = note.get("description") if note.get("merged") else f"runs kept: {note.get('reason')}"
            lines[c.key.model] = f"{c.key.model}: {what}"
    if not lines:
        return []
    return [Heading("What the merged layout is"), Bullets(tuple(lines[m] for m in sorted(lines)))]


def _problems(cases: Sequence[CaseResult]) -> list[Block]:
    failures = failure_lines(cases)
    unavailable = unavailable_lines(cases)
    blocks: list[Block] = []
    noisy = noise_warnings(cases)
    busy = load_note(cases)
    if busy:
        noisy.insert(0, busy[0].upper() + busy[1:])
    if noisy:
        blocks += [Heading("Too noisy to resolve"), Bullets(tuple(noisy))]
    if failures:
        blocks += [Heading("Failures"), Bullets(tuple(failures))]
    if unavailable:
        blocks += [Heading("Not measured here"), Bullets(tuple(unavailable))]
    return blocks


# --- rendering ------------------------------------------------------------------------------------


def render_markdown(blocks: Sequence[Block], base: Path) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            out += [block.text, ""]
        elif isinstance(block, Bullets):
            out += [f"- {_md_cell(item)}" for item in block.items] + [""]
        elif isinstance(block, TableBlock):
            out.append("| " + " | ".join(block.headers) + " |")
            out.append(
                "|" + "|".join("---:" if i in block.right else "---" for i in range(len(block.headers))) + "|"
            )
            out += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, Image):
            out += [f"![{block.caption}]({os.path.relpath(block.path, base)})", ""]
    return "\n".join(out)


def render_html(blocks: Sequence[Block]) -> str:
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, TableBlock):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
            rows = "".join(
                "<tr>"
                + "".join(
                    f'<td class="{"r" if i in block.right else ""} {_verdict_class(cell)}">{html.escape(cell)}</td>'
                    for i, cell in enumerate(row)
                )
                + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
            )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:12px;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:2px 6px}th{background:#f0f0f0}td.r{text-align:right}"
        "td.pass{color:#080}td.vacuous{color:#a60}td.FAIL,td.failed,td.timeout{color:#c00;font-weight:bold}img{max-width:100%}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ccnbench report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _verdict_class(cell: str) -> str:
    return cell if cell in ("pass", "vacuous", "FAIL", "failed", "timeout") else ""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
