"""The terminal's bench table: each latency named for what it is, on the 2026-12-06 pair whose
medians moved with the host's load while the fastest calls did not."""

import io
import re

import pytest
from rich.console import Console

from ccnbench import results
from ccnbench.answers import tables

from helpers import PAIR, PAIR_CASE, by_process, case, fastest_by_hand

NUMBER = r"([0-9][0-9,.]*)"


def _row(text: str, key: str) -> list[list[str]]:
    """The printed lines of ``key``'s row, each split into its cells."""
    model, layout, target, _, batch = key.split("/")
    lines = text.splitlines()
    first = next(
        i for i, line in enumerate(lines)
        if [c.strip() for c in line.split("│")[1:6]] == [model, layout, target, "fp32", batch[1:]]
    )  # fmt: skip
    rows = [lines[first]] + [
        line for line in lines[first + 1 : first + 4] if line.split("│")[1].strip() == ""
    ]
    return [[c.strip() for c in line.split("│")[1:-1]] for line in rows]


@pytest.mark.parametrize("name", ["a", "b"])
def test_the_bench_table_prints_own_speed_and_the_median_with_its_range_over_processes(name):
    run = results.load(PAIR / f"{name}.json")
    timed = next(c for c in run.cases if str(c.key) == PAIR_CASE)
    console = Console(width=200, file=io.StringIO())
    console.print(tables.bench_table(list(run.cases)))
    text = console.file.getvalue()
    flat = " ".join(text.split())
    assert tables.LEGEND in flat  # under the table
    headers = [" ".join(" ".join(line.split("┃")[i] for line in text.splitlines() if "┃" in line).split())
               for i in range(1, 13)]  # fmt: skip
    assert headers[5:7] == ["fastest ms [95 %]", "p50 / p99 ms (procs)"]

    first, second = _row(text, PAIR_CASE)[:2]
    columns = ["model", "layout", "target", "prec", "batch", *tables.BENCH_COLUMNS]
    fastest, load = columns.index(tables.FASTEST), columns.index(tables.LOAD)
    assert float(first[fastest]) == pytest.approx(fastest_by_hand(timed.latency), abs=5e-4)
    low, high = map(float, re.fullmatch(rf"\[{NUMBER}, {NUMBER}\]", second[fastest]).groups())
    assert low < float(first[fastest]) < high
    for line, q in ((first, 50), (second, 99)):
        value, low, high = map(float, re.fullmatch(rf"{NUMBER} \({NUMBER}-{NUMBER}\)", line[load]).groups())
        spread = by_process(timed.latency, q)
        assert len(spread) == 2
        assert low == pytest.approx(min(spread.values()), rel=5e-3)
        assert high == pytest.approx(max(spread.values()), rel=5e-3)
        assert low <= value <= high


def test_one_process_prints_the_value_alone():
    plain = case("ort:cpu", 2.0)  # no contest blocks: no interval, no range
    cells = tables.case_cells(plain, {plain.key: plain})
    assert cells[tables.FASTEST] == f"{plain.latency.fastest:.3f}"
    assert cells[tables.P50] == f"{plain.latency.median:.3f}"
    assert cells[tables.LOAD] == f"{plain.latency.median:.3f} / {plain.latency.p99:.3f}"
