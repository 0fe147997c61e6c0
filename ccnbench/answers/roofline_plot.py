"""The report's roofline: per device, each model and batch size's shipped format as a point
(its FLOP per byte, its GFLOP/s at the fastest call) under the measured roofs as lines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ccnbench.answers.plots import _pyplot, _save
from ccnbench.roofline.case_roofs import DETAIL, case_reading
from ccnbench.roofline.reading import Reading


def _points(recommendations: Sequence[Any]) -> dict[str, list[tuple[Any, Reading]]]:
    by_device: dict[str, list[tuple[Any, Reading]]] = {}
    for r in recommendations:
        if r.best is None:
            continue
        reading = case_reading(r.best.case)
        if reading is not None:
            by_device.setdefault(r.device, []).append((r, reading))
    return by_device


def roofline_plots(recommendations: Sequence[Any], plot_dir: Path) -> list[tuple[str, Path]]:
    """One roofline plot per device that has a shipped format with a roofline stamp."""
    made = []
    for device, points in sorted(_points(recommendations).items()):
        made.append((device, roofline_plot(device, points, plot_dir / f"roofline_{device}.png")))
    return made


def roofline_plot(device: str, points: Sequence[tuple[Any, Reading]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    intensities = [reading.intensity for _, reading in points if reading.intensity > 0]
    low = min([*intensities, 0.1]) / 3
    high = max([*intensities, 100.0]) * 3
    memory_rates: dict[float, str] = {}
    compute_rates: dict[tuple[str, float], None] = {}
    for r, _ in points:
        stamp = r.best.case.details[DETAIL]
        memory_rates[float(stamp["memory"]["rate"])] = stamp["memory"]["method"]
        compute_rates[(stamp["compute"]["family"], float(stamp["compute"]["rate"]))] = None
    for i, (family, rate) in enumerate(sorted(compute_rates, key=lambda k: -k[1])):
        for memory in memory_rates:
            ridge = rate / memory
            xs = [low, ridge, high]
            ax.plot(xs, [min(rate, x * memory) / 1e9 for x in xs], color=f"C{i}", lw=1.2, alpha=0.8)
        ax.annotate(
            f"{family} GEMM {rate / 1e9:,.0f} GFLOP/s",
            (high, rate / 1e9),
            ha="right",
            va="bottom",
            fontsize=7,
        )
    for memory in memory_rates:
        ax.annotate(
            f"memory {memory / 1e9:,.1f} GB/s",
            (low * 1.2, low * 1.2 * memory / 1e9),
            rotation=0,
            fontsize=7,
            va="bottom",
        )
    for r, reading in points:
        ax.plot(reading.intensity, reading.flops_per_second / 1e9, "o", color="black", ms=4)
        ax.annotate(
            f"{r.model} b{r.batch}: {r.best.label} ({reading.of_roof:.0%})",
            (reading.intensity, reading.flops_per_second / 1e9),
            fontsize=6,
            xytext=(4, -3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_xlabel("arithmetic intensity (FLOP per byte of least traffic)")
    ax.set_ylabel("GFLOP/s at the fastest call")
    ax.set_title(f"Roofline, {device}: shipped formats against the measured roofs", fontsize=9)
    ax.grid(True, which="both", alpha=0.2)
    return _save(plt, fig, path)
