"""The explain tables as a terminal reads them (rich), with the overhead lines under each."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.markup import escape
from rich.table import Table

from ccnbench.explain.records import Cell, FormatProfile, LayerTable

NO_TIME = "—"
_LABEL_WIDTH = 48
_KERNEL_WIDTH = 18


def _label_min(layers: LayerTable) -> int:
    """Never squeeze the layer names (rich shrinks the first column first on a narrow terminal)."""
    return min(_LABEL_WIDTH, max((len(r.label) for r in layers.rows), default=10), 36)


LEGEND = (
    f"{NO_TIME}: no time of its own in that format (fused into or folded by a neighbour, or not in "
    "that format); [fused]: one unit of the runtime covers every module of the row; shares are of "
    "the profiled call (the sum of the rows, medians per call). roof: the row's achieved rate over "
    "the roofline's attainable one at its FLOP/B (mem: below the ridge, read against the memory "
    "roof; cmp: against its runtime's GEMM roof), at the profiled time, which the profiler slows."
)


def us_text(us: float | None) -> str:
    if us is None:
        return NO_TIME
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"


def _kernel(cell: Cell | None, width: int = 22) -> str:
    if cell is None or not cell.kernels:
        return ""
    text = ", ".join(cell.kernels)
    return text if len(text) <= width else text[: width - 1] + "…"


def _label(row_label: str, cells: Sequence[Cell | None]) -> str:
    # Escaped: rich would read "[fused]" as a style tag and print nothing.
    return escape(row_label + (" [fused]" if any(c and c.fused for c in cells) else ""))


def table_of(layers: LayerTable) -> Table:
    return _compare(layers) if layers.compare else _single(layers)


def _single(layers: LayerTable) -> Table:
    table = Table(title=layers.title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("layer (module)", overflow="fold", max_width=_LABEL_WIDTH, min_width=_label_min(layers))
    for label in layers.columns:
        # One table holds one layout (its title says which): the target names the column.
        table.add_column(f"{label.split()[0]} µs", justify="right", no_wrap=True)
        table.add_column("%", justify="right", no_wrap=True)
        table.add_column("kernel", overflow="ellipsis", no_wrap=True, max_width=_KERNEL_WIDTH)
    for row in layers.rows:
        cells = []
        for cell in row.cells:
            cells += [us_text(cell.us if cell else None), f"{cell.share:.0%}" if cell else "", _kernel(cell)]
        table.add_row(_label(row.label, row.cells), *cells)
    table.add_section()
    table.add_row(
        "profiled call (sum of rows)", *[x for t in layers.totals for x in (us_text(t), "100%", "")]
    )
    return table


def roofline_table(layers: LayerTable) -> Table | None:
    """A one-layout table's rows against the roofs (its own table: beside the times' columns
    it would not fit a terminal): FLOPs, least bytes, FLOP/B, and per target the rate and the
    fraction of the roof that bounds it. None when nothing was counted, or for a comparison
    (whose table carries its roof columns itself)."""
    if layers.compare or not _counted(layers):
        return None
    table = Table(
        title=f"{layers.title}: against the roofs", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    table.add_column("layer (module)", overflow="fold", max_width=_LABEL_WIDTH, min_width=_label_min(layers))
    for header in ("MFLOP", "MB", "FLOP/B"):
        table.add_column(header, justify="right", no_wrap=True)
    for label in layers.columns:
        table.add_column(f"{label.split()[0]} GFLOP/s", justify="right", no_wrap=True)
        table.add_column("roof", justify="right", no_wrap=True)
    for row in layers.rows:
        counted = next((c for c in row.cells if c is not None and c.bytes), None)
        if counted is None:
            continue
        cells = [
            f"{(counted.flops or 0) / 1e6:,.1f}",
            f"{counted.bytes / 1e6:,.2f}",
            intensity_text(row.cells),
        ]
        for cell in row.cells:
            reading = cell.reading if cell is not None else None
            cells += [f"{reading.flops_per_second / 1e9:,.1f}" if reading else "", roof_text(cell)]
        table.add_row(_label(row.label, row.cells), *cells)
    whole = next((c for c in layers.calls if c is not None), None)
    if whole is not None:
        table.add_section()
        cells = [f"{whole.flops / 1e6:,.1f}", f"{whole.bytes / 1e6:,.2f}", f"{whole.intensity:.1f}"]
        for call in layers.calls:
            cells += [f"{call.flops_per_second / 1e9:,.1f}", call.short] if call else ["", ""]
        table.add_row("fastest unprofiled call (sum of layers)", *cells)
    return table


def _counted(layers: LayerTable) -> bool:
    return any(c is not None and c.reading is not None for r in layers.rows for c in r.cells)


def intensity_text(cells: Sequence[Cell | None]) -> str:
    """The row's FLOP per byte (the first column that counted it: one layout's layers are the
    same in every column)."""
    for cell in cells:
        if cell is not None and cell.bytes:
            return f"{(cell.flops or 0) / cell.bytes:.1f}"
    return ""


def roof_text(cell: Cell | None) -> str:
    return cell.reading.short if cell is not None and cell.reading is not None else ""


def roof_lines(layers: LayerTable) -> list[str]:
    """Per column: the roofs it is read against and where its fastest call sits."""
    lines = []
    for label, pair, call in zip(layers.columns, layers.roofs, layers.calls):
        if pair is None or not pair.complete:
            continue
        compute, memory = pair.compute, pair.memory
        text = (
            f"{label}: roofs {compute.key.family} GEMM {compute.rate / 1e9:,.0f} GFLOP/s "  # type: ignore[union-attr]
            f"(spread {compute.spread:.0%} over repeats), memory {memory.rate / 1e9:,.1f} GB/s "  # type: ignore[union-attr]
            f"(spread {memory.spread:.0%}); ridge {pair.ridge:.1f} FLOP/B"  # type: ignore[union-attr]
        )
        if call is not None:
            text += (
                f"; fastest unprofiled call {call.flops_per_second / 1e9:,.1f} GFLOP/s at "
                f"{call.intensity:.1f} FLOP/B: {call.of_roof:.0%} of its {call.bound} roof"
            )
        lines.append(text)
    return lines


def _compare(layers: LayerTable) -> Table:
    a, b = layers.columns
    table = Table(
        title=f"{layers.title}\nA = {a}, B = {b}", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    table.add_column("layer (module)", overflow="fold", max_width=_LABEL_WIDTH, min_width=_label_min(layers))
    counted = _counted(layers)
    for side in ("A", "B"):
        table.add_column(f"{side} µs", justify="right", no_wrap=True)
        table.add_column(f"{side} kernel", overflow="ellipsis", no_wrap=True, max_width=_KERNEL_WIDTH)
    for header in ("B/A", "Δ µs", "of |Δ|") + (("FLOP/B", "A roof", "B roof") if counted else ()):
        table.add_column(header, justify="right", no_wrap=True)
    difference = layers.totals[1] - layers.totals[0]
    # Each row's signed share of all the change: rows that cancel out still show their weight.
    moved = sum(abs(r.us(1) - r.us(0)) for r in layers.rows)
    for row in layers.rows:
        first, second = row.cells
        delta = row.us(1) - row.us(0)
        ratio = f"{second.us / first.us:.2f}×" if first and second and first.us > 0 else ""
        share = f"{delta / moved:+.0%}" if moved else ""
        table.add_row(
            _label(row.label, row.cells),
            us_text(first.us if first else None), _kernel(first),
            us_text(second.us if second else None), _kernel(second),
            ratio, f"{delta:+,.0f}" if abs(delta) >= 100 else f"{delta:+.1f}", share,
            *((intensity_text(row.cells), roof_text(first), roof_text(second)) if counted else ()),
        )  # fmt: skip
    table.add_section()
    total_a, total_b = layers.totals
    table.add_row(
        "profiled call (sum of rows)", us_text(total_a), "", us_text(total_b), "",
        f"{total_b / total_a:.2f}×" if total_a else "", f"{difference:+,.0f}", "",
        *(("", "", "") if counted else ()),
    )  # fmt: skip
    return table


def overhead_lines(profiles: Sequence[FormatProfile]) -> list[str]:
    """Per format: the fastest call without and with its profiler (interleaved rounds)."""
    lines = []
    for p in profiles:
        o = p.overhead
        text = f"{p.label} b{p.batch}: fastest call {us_text(o.fastest_us)} µs unprofiled"
        if o.fastest_profiled_us is not None:
            text += f", {us_text(o.fastest_profiled_us)} µs profiled ({o.factor:.2f}×)"
        text += f", {o.rounds} interleaved rounds"
        if p.attributed:
            text += f"; layers from {p.calls} profiled calls"
        if p.note:
            text += f"; {p.note}"
        lines.append(text)
    return lines
