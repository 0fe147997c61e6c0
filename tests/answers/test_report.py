"""Reports: markdown, self-contained HTML and every plot, from hand-made and recorded runs."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ccnbench import results
from ccnbench.answers import tables
from ccnbench.answers.report import write_report
from ccnbench.cli import app

from helpers import PAIR, PAIR_CASE, ROOT, by_process, case, contest_cases, fastest_by_hand, run

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ("latency_vs_batch.png", "merged_vs_kept.png", "best_target.png", "error_vs_tolerance.png")
BASELINE = ROOT / "results" / "baseline-cpu"


def _cpu_run():
    cases = []
    for model in ("model-n3", "early-n3"):
        for batch, scale in ((1, 1.0), (8, 5.0)):
            for layout, merged in (("kept", 1.0), ("merged", 0.7)):
                cases += [
                    case("torch:cpu", 10 * scale * merged, model=model, batch=batch, layout=layout),
                    case("ort:cpu", 4 * scale * merged, model=model, batch=batch, layout=layout),
                    case(
                        "compile:cpu",
                        2 * scale * merged,
                        model=model,
                        batch=batch,
                        layout=layout,
                        passed=model != "early-n3",
                    ),
                ]
    cases.append(case("ort:cpu", 1.0, model="model-n3", precision="fp16", status="failed"))
    return run(*cases, run_id="cpu-run")


def _gpu_run():
    cases = [case("torch:cuda", 1.0, batch=b) for b in (1, 8)] + [
        case("ort:cuda", 0.4, batch=b) for b in (1, 8)
    ]
    return run(*cases, run_id="gpu-run")


def _assert_report(out: Path):
    for name in PLOTS:
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    markdown = (out / "report.md").read_text()
    for section in ("## Environment", "## Which format to ship", "## Plots", "## Every case"):
        assert section in markdown
    for name in PLOTS:
        assert f"(plots/{name})" in markdown
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(PLOTS)
    assert 'src="http' not in html and "<link" not in html  # self-contained
    return markdown


def test_report_from_two_runs_merges_cpu_and_gpu(tmp_path):
    results.save(_cpu_run(), tmp_path / "cpu")
    results.save(_gpu_run(), tmp_path / "gpu")
    written = write_report([tmp_path / "cpu", tmp_path / "gpu"], tmp_path / "combined")
    assert written == tmp_path / "combined" / "report.md"
    markdown = _assert_report(tmp_path / "combined")
    assert "cpu-run" in markdown and "gpu-run" in markdown
    # The recommendation skips the faster compile:cpu format where it failed agreement, and says why.
    assert "| early-n3 | 1 | cpu | ort:cpu merged fp32 |" in markdown
    assert "compile:cpu merged fp32 was 2.00x faster but failed agreement" in markdown
    assert "| model-n3 | 1 | cuda | ort:cuda kept fp32 |" in markdown
    assert "## Failures" in markdown and "failed on purpose" in markdown


def test_report_cli_writes_into_the_run_directory(tmp_path):
    results.save(_cpu_run(), tmp_path)
    out = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert out.exit_code == 0, out.output
    _assert_report(tmp_path)
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert bad.exit_code == 1 and bad.output.startswith("error: no results at")


@pytest.mark.skipif(
    not (BASELINE / "results.json").exists(), reason="no recorded baseline-cpu run in results/"
)
def test_report_on_the_recorded_cpu_baseline(tmp_path):
    write_report([BASELINE], tmp_path)
    markdown = _assert_report(tmp_path)
    recorded = results.load(BASELINE)
    for model in {c.key.model for c in recorded.cases}:
        assert f"### {model}" in markdown


def test_report_says_what_the_graph_pass_merged_and_what_it_left_kept(tmp_path):
    from dataclasses import replace

    merged = replace(
        case("torch:cpu", 3.0, model="user:nets.py:two_trunks", layout="merged"),
        details={"merge": {"merged": True, "description": "2 × ResNet (trunks.0, trunks.1), 12 Conv each"}},
    )
    kept_anyway = replace(
        case("torch:cpu", 3.0, model="user:nets.py:odd", layout="merged"),
        details={"merge": {"merged": False, "reason": "branches differ: b.0.weight is 6×1×3×3×3"}},
    )
    text = write_report([_dir(tmp_path, run(merged, kept_anyway))], tmp_path / "out").read_text()
    section = text.split("## What the merged layout is", 1)[1]
    assert "user:nets.py:two_trunks: 2 × ResNet (trunks.0, trunks.1), 12 Conv each" in section
    assert "user:nets.py:odd: runs kept: branches differ: b.0.weight is 6×1×3×3×3" in section


def _dir(tmp_path, recorded):
    path = tmp_path / "run"
    results.save(recorded, path)
    return path


def _bimodal(target, layout, fast, slow=230.0):
    """A case as a loaded machine recorded it (`bench --shard` on a busy 2-core box): a few fast
    blocks with many iterations and many 230 ms blocks of two, so the pooled median of all samples
    (fast) lies far outside the interval over per-process block medians (slow)."""
    from dataclasses import replace

    from ccnbench.measure.timing import Block, LatencyStats

    blocks = []
    for p in range(3):
        for r in range(6):
            if (p + r) % 4 == 0:
                blocks.append(Block(p, r, tuple(fast * (1 + i / 100) for i in range(12))))
            else:
                blocks.append(Block(p, r, (slow * (1 + (p * 6 + r) / 50), slow * (1.01 + r / 40))))
    plain = case(target, 1.0, model="early-n3", layout=layout)
    return replace(plain, latency=LatencyStats.from_blocks(blocks, 1, "perf_counter"), contest="c1")


def test_report_never_draws_negative_error_bars(tmp_path):
    """Regression: `report s1 s2` on two shards ended in "'yerr' must not contain negative values"
    because error bars were centred on the pooled median, not on their interval's own point. The
    latency plot now draws the fastest call, which is its interval's own point."""
    from ccnbench.answers import plots, stats

    spread = contest_cases({("torch:cpu", "kept"): 2.0, ("ort:cpu", "kept"): 1.0}, process_spread=0.05)
    centres, yerr = plots._centred(spread)
    intervals = [stats.fastest_interval(c.latency) for c in spread]
    assert all(i is not None and i.computable for i in intervals)
    assert centres == pytest.approx([c.latency.fastest for c in spread])
    assert yerr is not None and min(min(yerr[0]), min(yerr[1])) >= 0
    assert yerr[0][0] == pytest.approx(centres[0] - intervals[0].low)

    cases = [_bimodal("torch:cpu", "kept", 0.25), _bimodal("torch:cpu", "merged", 0.22),
             _bimodal("ort:cpu", "kept", 0.2), _bimodal("ort:cpu", "merged", 0.18)]  # fmt: skip
    latency = cases[0].latency
    assert not stats.median_interval(latency).contains(latency.median)  # the data that crashed the old plots
    results.save(run(*cases, run_id="loaded"), tmp_path / "run")
    out = tmp_path / "rep"
    assert write_report([tmp_path / "run"], out).is_file()
    for name in ("latency_vs_batch.png", "merged_vs_kept.png", "best_target.png"):
        assert (out / "plots" / name).read_bytes().startswith(PNG)


def test_every_case_cell_carries_the_one_verdict():
    """Tables and the report print ratios through stats.describe: tie, inconclusive, unpaired."""
    from dataclasses import replace

    from ccnbench.answers.derived import index
    from ccnbench.answers.tables import case_cells

    from helpers import contest_cases

    tied = contest_cases({("torch:cpu", "kept"): 2.0, ("torch:cpu", "merged"): 2.0}, noise=0.01)
    merged = next(c for c in tied if c.key.layout == "merged")
    assert case_cells(merged, index(tied))["merged vs kept"].endswith(" tie")
    wide = contest_cases(
        {("torch:cpu", "kept"): 2.0, ("torch:cpu", "merged"): 2.0}, rounds=3, process_spread=0.07, seed=3
    )
    merged = next(c for c in wide if c.key.layout == "merged")
    assert case_cells(merged, index(wide))["merged vs kept"].endswith(" inconclusive")
    apart = [replace(c, contest="elsewhere") if c.key.layout == "merged" else c for c in tied]
    merged = next(c for c in apart if c.key.layout == "merged")
    kept = next(c for c in apart if c.key.layout == "kept")
    unpaired = f"{kept.latency.fastest / merged.latency.fastest:.2f}× unpaired"  # their fastest calls
    assert case_cells(merged, index(apart))["merged vs kept"] == unpaired
    one = contest_cases({("torch:cpu", "kept"): 2.0, ("ort:cpu", "kept"): 1.0}, processes=1)
    ort = next(c for c in one if c.key.target == "ort:cpu")
    assert "within-process" in case_cells(ort, index(one))["vs eager"]


def _md_table(markdown: str, after: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table after the line ``after``: its headers and rows of cells."""
    lines = markdown.split(after, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows[0], rows[2:]


def test_the_report_prints_own_speed_rates_at_it_and_load_figures_with_their_ranges(tmp_path):
    """On the 2026-12-06 pair's run a: samples/s and GFLOP/s at the fastest call, the p50 and p99
    with their range over processes computed here from the blocks, each header saying which."""
    recorded = results.load(PAIR / "a.json")
    timed = next(c for c in recorded.cases if str(c.key) == PAIR_CASE)
    lat = timed.latency
    markdown = write_report([PAIR / "a.json"], tmp_path / "rep").read_text()
    assert markdown.count(f"Legend: {tables.LEGEND}.") == 2  # under the ship table and over every case

    headers, rows = _md_table(markdown, "### multitask-n3@tiny")
    for header in ("fastest ms [95 % interval]", "samples/s @fastest", "GFLOP/s @fastest",
                   "p50 ms (range over processes)", "p99 ms (range over processes)"):  # fmt: skip
        assert header in headers
    row = dict(zip(headers, next(r for r in rows if r[:4] == ["kept", "ort:cpu", "fp32", "1"])))
    fastest = fastest_by_hand(lat)
    assert float(row["samples/s @fastest"].replace(",", "")) == pytest.approx(1 / (fastest / 1e3), abs=1)
    gflops = lat.flops_per_sample / (fastest / 1e3) / 1e9
    assert float(row["GFLOP/s @fastest"]) == pytest.approx(gflops, abs=0.05)
    assert abs(1 / (lat.median / 1e3) - 1 / (fastest / 1e3)) > 100  # not the rate at the median
    for q, header in ((50, "p50 ms (range over processes)"), (99, "p99 ms (range over processes)")):
        value, low, high = map(
            float, re.fullmatch(r"([0-9.]+) \(([0-9.]+)-([0-9.]+)\)", row[header]).groups()
        )
        spread = by_process(lat, q)
        assert (low, high) == pytest.approx((min(spread.values()), max(spread.values())), rel=5e-3)
        assert low <= value <= high

    headers, rows = _md_table(markdown, "## Which format to ship")
    assert headers[4:7] == [
        "fastest ms [95 % interval]",
        "% of roof @fastest",
        "p50 / p99 ms (range over processes)",
    ]
    ship = dict(zip(headers, next(r for r in rows if r[:2] == ["multitask-n3@tiny", "1"])))
    assert ship["ship"] == "ort:cpu kept fp32"
    point, low, high = map(
        float, re.fullmatch(r"([0-9.]+) \[([0-9.]+), ([0-9.]+)\]", ship[headers[4]]).groups()
    )
    assert point == pytest.approx(fastest, abs=5e-4) and low < point < high
    p50 = ship[headers[6]].split(" / ")[0]
    spread = by_process(lat, 50)
    assert p50 == f"{lat.median:.3f} ({min(spread.values()):.3f}-{max(spread.values()):.3f})"
