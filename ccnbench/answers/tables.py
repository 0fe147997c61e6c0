"""Rich tables for the terminal. Presentation only: every number comes from the results."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from ccnbench.answers.derived import (
    fastest_text,
    index,
    is_reference,
    merged_interval,
    percentile_text,
    speedup_interval,
)
from ccnbench.answers.stats import describe
from ccnbench.results import CaseKey, CaseResult
from ccnbench.roofline.case_roofs import case_reading, roof_text

_VERDICT_STYLE = {
    "pass": "green",
    "reference": "yellow",
    "vacuous": "yellow",
    "FAIL": "bold red",
    "failed": "bold red",
    "timeout": "red",
    "unavailable": "dim",
}


def verdict_text(result: CaseResult) -> str:
    verdict = result.verdict
    return f"[{_VERDICT_STYLE.get(verdict, 'default')}]{verdict}[/]"


# The latency columns, named for what they are (``derived.fastest_text``, ``percentile_text``): a
# format's own speed, which repeats between runs on one machine, with its 95 % interval over
# processes and the rates at it; or a figure under this host's load, with its range over processes.
FASTEST = "fastest ms [95 % interval]"
P50 = "p50 ms (range over processes)"
P99 = "p99 ms (range over processes)"
LOAD = "p50 / p99 ms (range over processes)"  # both in one column, where a table is short of width
RATE = "samples/s @fastest"
GFLOPS = "GFLOP/s @fastest"
# The fastest call against the machine's measured roofs (ccnbench.roofline): the bound and how
# much of it the format reaches.
ROOF = "% of roof @fastest"
ROOF_LEGEND = (
    "% of roof: the fastest call's FLOP/s over what the roofline allows at the model's FLOP per byte "
    "(the sum of its layers' least traffic), against this machine's measured roofs: its runtime's GEMM "
    "(compute) or a triad (memory), whichever bounds it"
)
#: The one line under every table of these columns (the terminal's and the report's).
LEGEND = (
    "own speed: fastest call [95 % interval over processes] and the rates at it (@fastest); "
    "under this host's load: p50 and p99 (range over processes), which move with the host's load between runs"
)


def case_cells(case: CaseResult, by_key: dict[CaseKey, CaseResult]) -> dict[str, str]:
    """A case's numbers formatted once, for the terminal table and the report alike."""
    lat, agr, mem = case.latency, case.agreement, case.memory
    memory = mem.headline_bytes if mem else None
    speed_i, merged_i = speedup_interval(by_key, case), merged_interval(by_key, case)
    noise = lat.noise if lat else None
    gflops = lat.gflops_at_fastest if lat else None
    return {
        FASTEST: fastest_text(lat) if lat else "-",
        P50: percentile_text(lat, 50) if lat else "-",
        P99: percentile_text(lat, 99) if lat else "-",
        LOAD: f"{percentile_text(lat, 50)} / {percentile_text(lat, 99)}" if lat else "-",
        RATE: f"{lat.throughput_at_fastest:,.0f}" if lat else "-",
        GFLOPS: f"{gflops:,.1f}" if gflops else "-",
        ROOF: roof_text(case_reading(case)),
        "memory MiB": f"{memory / 2**20:.1f}" if memory is not None else "-",
        "build s": f"{case.build_seconds:.2f}" if case.build_seconds is not None else "-",
        "max abs err": f"{agr.max_abs:.1e}" if agr else "-",
        "tolerance": f"{agr.worst.atol:.0e}/{agr.worst.rtol:.0e}" if agr else "-",
        "verdict": case.verdict,
        "vs eager": "ref" if is_reference(case.key) else (describe(speed_i) if speed_i else "-"),
        "merged vs kept": describe(merged_i) if merged_i else "-",
        "noise": f"{noise:.1%}" if noise is not None else "-",
    }


def check_table(results: Sequence[CaseResult]) -> Table:
    """One row per case that ran, one section per target."""
    table = Table(title="Agreement with the float64 oracle")
    for col, justify in (
        ("model", "left"),
        ("layout", "left"),
        ("target", "left"),
        ("prec", "left"),
        ("batch", "right"),
        ("max abs", "right"),
        ("needs atol", "right"),
        ("atol / rtol", "right"),
        ("top-1", "right"),
        ("verdict", "left"),
    ):
        table.add_column(col, justify=justify, no_wrap=col not in ("model",))
    ran = sorted((r for r in results if r.status != "unavailable"), key=lambda r: (r.key.target, str(r.key)))
    for i, r in enumerate(ran):
        last_of_target = i + 1 == len(ran) or ran[i + 1].key.target != r.key.target
        a = r.agreement
        if a is None:
            cells = ["-", "-", "-", "-"]
        else:
            worst = a.worst
            top1 = [o.top1 for o in a.outputs if o.top1 is not None]
            cells = [
                f"{a.max_abs:.1e}",
                f"{worst.required_atol:.1e}",
                f"{worst.atol:.0e} / {worst.rtol:.0e}",
                f"{min(top1):.0%}" if top1 else "-",
            ]
        table.add_row(
            r.key.model,
            r.key.layout,
            r.key.target_label,
            r.key.precision,
            str(r.key.batch),
            *cells,
            verdict_text(r),
            end_section=last_of_target,
        )
    return table


def unavailable_lines(results: Sequence[CaseResult]) -> list[str]:
    """One line per unavailable target with its reason (deduplicated)."""
    seen: dict[tuple[str, str], str] = {}
    for r in results:
        if r.status == "unavailable":
            seen.setdefault((r.key.target, r.message), r.key.precision)
    return [f"{target}: unavailable: {reason}" for (target, reason) in seen]


def failure_lines(results: Sequence[CaseResult]) -> list[str]:
    """One line per failed case; non-finite outputs one line per model, layout, target and precision
    (every batch size), naming the outputs that held NaN or Inf."""
    lines: list[str | tuple[str, ...]] = []
    nonfinite: dict[tuple[str, ...], tuple[list[int], dict[str, int]]] = {}
    for r in results:
        if r.status in ("failed", "timeout"):
            lines.append(f"{r.key}: {r.status}: {r.message}")
        elif r.status == "ok" and r.agreement is not None and r.agreement.nonfinite:
            batches, counts = nonfinite.setdefault(r.key.group, ([], {}))
            if not batches:
                lines.append(r.key.group)  # placeholder, replaced below, keeps the order of the cases
            batches.append(r.key.batch)
            for o in r.agreement.nonfinite:
                counts[o.name] = counts.get(o.name, 0) + o.nonfinite
        elif r.status == "ok" and r.agreement is not None and any(o.constant for o in r.agreement.outputs):
            (o, *_) = (o for o in r.agreement.outputs if o.constant)
            lines.append(f"{r.key}: output {o.name} is constant where the reference varies (max abs {o.max_abs:.2e}): "
                         "underflow, or a dead layer")  # fmt: skip
        elif r.status == "ok" and r.agreement is not None and not r.agreement.passed:
            w = r.agreement.worst
            why = f"max abs {w.max_abs:.2e} needs atol {w.required_atol:.2e} > {w.atol:.0e}"
            lines.append(f"{r.key}: output {w.name}: {why}")
    return [line if isinstance(line, str) else _nonfinite_line(line, *nonfinite[line]) for line in lines]


def _nonfinite_line(group: tuple[str, ...], batches: list[int], counts: dict[str, int]) -> str:
    model, _, layout, target, precision, memory_format = group
    if memory_format != "contiguous":
        target = f"{target} {memory_format}"  # as CaseKey.target_label shows it
    outputs = ", ".join(f"{name} ({n} NaN/Inf values)" for name, n in counts.items())
    where = f"batch {batches[0]}" if len(batches) == 1 else f"batches {', '.join(map(str, batches))}"
    return f"{model}/{layout}/{target}/{precision} ({where}): non-finite outputs: {outputs}"


# The rates (samples/s, GFLOP/s) are in the report; the terminal keeps the latencies they derive from.
BENCH_COLUMNS = (FASTEST, LOAD, "memory MiB", "max abs err", "verdict", "vs eager", "merged vs kept")
# The terminal's headers, on two lines, and its latency cells: each figure over its interval or
# range (p50 over p99), so that at 160 columns (a log's width) the numbers keep their width, the
# ratios' columns wrap instead, and no number is cut to an ellipsis.
SHORT_HEADERS = {FASTEST: "fastest ms\n[95 %]", LOAD: "p50 / p99 ms\n(procs)", "memory MiB": "memory\nMiB",
                 "max abs err": "max abs\nerr"}  # fmt: skip


def _terminal_cell(col: str, text: str) -> str:
    if col == FASTEST:
        return text.replace(" ", "\n", 1)
    return text.replace(" / ", "\n") if col == LOAD else text


def bench_table(cases: Sequence[CaseResult], title: str = "Benchmark") -> Table:
    """Per case: latency, memory, agreement and speed-up over eager PyTorch, with ``LEGEND`` under it."""
    by_key = index(cases)
    table = Table(title=title, caption=LEGEND)
    for col in ("model", "layout", "target", "prec", "batch", *BENCH_COLUMNS):
        left = col in ("model", "layout", "target", "prec", "verdict")
        table.add_column(SHORT_HEADERS.get(col, col), justify="left" if left else "right",
                         no_wrap=col in ("model", "target", *SHORT_HEADERS), overflow="fold")  # fmt: skip
    shown = [c for c in cases if c.status != "unavailable"]  # listed below the table with their reasons
    ordered = sorted(
        shown, key=lambda c: (c.key.model, c.key.precision, c.key.batch, c.key.target, c.key.layout)
    )
    for i, c in enumerate(ordered):
        nxt = ordered[i + 1] if i + 1 < len(ordered) else None
        cells = {col: _terminal_cell(col, text) for col, text in case_cells(c, by_key).items()}
        cells["verdict"] = verdict_text(c)
        k = c.key
        table.add_row(
            k.model, k.layout, k.target_label, k.precision, str(k.batch), *(cells[col] for col in BENCH_COLUMNS),
            end_section=nxt is None or (nxt.key.model, nxt.key.precision, nxt.key.batch) != (k.model, k.precision, k.batch),
        )  # fmt: skip
    return table
