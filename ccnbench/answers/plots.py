"""The report's plots (matplotlib, Agg backend, imported only when a report is written).

Each says which figure it draws: a format's own speed (the fastest call, with its 95 % interval
over processes: ``stats.fastest_interval``), or a figure under this host's load (p50, p99, with
their range over processes: ``LatencyStats.percentile_range``), as the tables do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ccnbench import fileio
from ccnbench.answers.derived import index, merged_interval, reference_key
from ccnbench.answers.recommend import recommend
from ccnbench.answers.stats import Interval, fastest_interval
from ccnbench.results import CaseResult

_DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(cases: Sequence[CaseResult]) -> list[CaseResult]:
    return [c for c in cases if c.status == "ok" and c.latency is not None]


def _models(cases: Sequence[CaseResult]) -> list[str]:
    return sorted({c.key.model for c in cases})


def _grid(plt, count: int, width: float = 4.2, height: float = 3.2):
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def latency_vs_batch(cases: Sequence[CaseResult], path: Path) -> Path | None:
    """The fastest call (own speed) against batch size with its 95 % interval over processes, one
    panel per model; colour = target, dashes = merged."""
    ok = _ok(cases)
    models = _models(ok)
    if not models:
        return None
    plt = _pyplot()
    fig, axes = _grid(plt, len(models))
    series = sorted({(c.key.target, c.key.precision) for c in ok})
    colors = {s: f"C{i % 10}" for i, s in enumerate(series)}
    for ax, model in zip(axes, models):
        lines: dict[tuple[str, str, str], list[CaseResult]] = {}
        for c in ok:
            if c.key.model == model:
                lines.setdefault((c.key.target, c.key.precision, c.key.layout), []).append(c)
        for (target, precision, layout), points in sorted(lines.items()):
            points.sort(key=lambda c: c.key.batch)
            marker = "o" if all(p.passed for p in points) else "x"
            fastest, yerr = _centred(points)
            ax.errorbar([p.key.batch for p in points], fastest, yerr=yerr,
                        linestyle="-" if layout == "kept" else "--", marker=marker,
                        color=colors[target, precision], capsize=2)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _plain_log_axis(ax, "y")
        batches = sorted({c.key.batch for c in ok if c.key.model == model})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("batch")
        ax.set_ylabel("fastest call (ms)")
        ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[s], label=f"{s[0]} {s[1]}") for s in series]
    handles += [Line2D([], [], color="black", linestyle="-", label="kept"),
                Line2D([], [], color="black", linestyle="--", label="merged")]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle("Own speed vs batch size: fastest call, 95 % intervals over processes "
                 "(x marks a format that failed agreement)")  # fmt: skip
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(plt, fig, path, layout=False)


def merged_speedup_plot(cases: Sequence[CaseResult], path: Path) -> Path | None:
    """Kept / merged fastest calls (paired by process where they shared a contest, with its 95 %
    interval) per model and target, one panel per batch size."""
    by_key = index(cases)
    points = [(c, merged_interval(by_key, c)) for c in _ok(cases) if c.key.layout == "merged"]
    points = [(c, ratio) for c, ratio in points if ratio is not None]
    if not points:
        return None
    plt = _pyplot()
    batches = sorted({c.key.batch for c, _ in points})
    fig, axes = _grid(plt, len(batches), width=6.0, height=3.6)
    for ax, batch in zip(axes, batches):
        here = [(c, ratio) for c, ratio in points if c.key.batch == batch]
        models = sorted({c.key.model for c, _ in here})
        series = sorted({(c.key.target, c.key.precision) for c, _ in here})
        width = 0.8 / max(1, len(series))
        for i, (target, precision) in enumerate(series):
            found = {
                c.key.model: r for c, r in here if (c.key.target, c.key.precision) == (target, precision)
            }
            xs = [m + i * width for m in range(len(models))]
            heights = [found[m].value if m in found else 0 for m in models]
            yerr = _spans(heights, [found.get(m) for m in models])
            ax.bar(xs, heights, width, yerr=yerr, capsize=2, label=f"{target} {precision}")
        ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_xticks([m + 0.4 - width / 2 for m in range(len(models))])
        ax.set_xticklabels(models, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("kept / merged latency")
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.legend(fontsize=6)
    fig.suptitle(
        "Merged vs kept: kept / merged fastest calls, 95 % intervals (> 1: one op per layer is faster)"
    )
    return _save(plt, fig, path)


def best_target_plot(cases: Sequence[CaseResult], path: Path) -> Path | None:
    """Per model: eager PyTorch (grey) and the fastest passing format (blue). The bar is the own
    speed (the fastest call, black whisker its 95 % interval over processes); the dot and the dash
    are p50 and p99 under this host's load, each line through them its range over processes."""
    recs = [r for r in recommend(cases) if r.best is not None]
    if not recs:
        return None
    batches = sorted({r.batch for r in recs})
    panels = [(d, b) for d in sorted({r.device for r in recs}) for b in sorted({batches[0], batches[-1]})]
    plt = _pyplot()
    fig, axes = _grid(plt, len(panels), width=6.5, height=4.2)
    by_key = index(cases)
    for ax, (device, batch) in zip(axes, panels):
        here = [r for r in recs if r.batch == batch and r.device == device]
        for i, r in enumerate(here):
            assert r.best is not None
            best = r.best.case
            ref = by_key.get(reference_key(best.key))
            for offset, case, color in ((-0.2, ref, "0.65"), (0.2, best, "C0")):
                if case is None or case.latency is None:
                    continue
                latency, x = case.latency, i + offset
                interval = fastest_interval(latency)
                ax.bar(x, latency.fastest, 0.4, color=color)
                if interval is not None and interval.computable:
                    ax.errorbar(x, latency.fastest, yerr=_spans([latency.fastest], [interval]),
                                color="black", capsize=2, linewidth=0.8)  # fmt: skip
                for q, marker in ((50, "o"), (99, "_")):
                    value, spread = latency.percentile(q), latency.percentile_range(q)
                    if spread is not None:
                        ax.vlines(x, *spread, color="C3", linewidth=0.8)
                    ax.plot(x, value, marker=marker, color="C3", markersize=4)
            top = max([r.best.p99, *(r.best.case.latency.percentile_range(99) or ())])
            ax.annotate(r.best.label, (i + 0.2, top), textcoords="offset points", xytext=(0, 3),
                        ha="center", va="bottom", fontsize=6, rotation=90)  # fmt: skip
        ax.set_xticks(range(len(here)))
        ax.set_xticklabels([r.model for r in here], rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        _plain_log_axis(ax)
        ax.margins(y=0.35)
        ax.set_ylabel("bar: fastest call [95 %]; red: p50 (dot), p99 (dash) under load", fontsize=8)
        ax.set_title(
            f"{device}, batch {batch}: eager PyTorch (grey) vs best passing format (blue)", fontsize=9
        )
    return _save(plt, fig, path)


def error_plot(cases: Sequence[CaseResult], path: Path) -> Path | None:
    """Max abs error against the float64 oracle per target and precision, with the tolerance."""
    checked = [c for c in cases if c.status == "ok" and c.agreement is not None]
    if not checked:
        return None
    plt = _pyplot()
    series = sorted({(c.key.target, c.key.precision) for c in checked})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(series) + 2), 4.0))
    for i, (target, precision) in enumerate(series):
        here = [c for c in checked if (c.key.target, c.key.precision) == (target, precision)]
        errors = [
            max(c.agreement.max_abs, 1e-12) if math.isfinite(c.agreement.max_abs) else 1e3 for c in here
        ]
        colors = ["C2" if c.passed else "C3" for c in here]
        jitter = [i + (j % 7 - 3) * 0.04 for j in range(len(here))]
        ax.scatter(jitter, errors, c=colors, s=14, zorder=3)
        atol = max(o.atol for c in here for o in c.agreement.outputs)
        ax.hlines(atol, i - 0.35, i + 0.35, colors="black", linestyles="--", linewidth=1, zorder=2)
    ax.set_xticks(range(len(series)))
    ax.set_xticklabels([f"{t}\n{p}" for t, p in series], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("max abs error vs float64 oracle")
    ax.set_title("Numeric error per target (green: pass, red: fail, dashed: atol)", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return _save(plt, fig, path)


def _centred(points: Sequence[CaseResult]) -> tuple[list[float], list[list[float]] | None]:
    """Each case's fastest call with error bars from its 95 % interval over processes, centred on
    the interval's own point (which is the fastest call); bars None where no case has one."""
    spans = [fastest_interval(p.latency) for p in points]
    centres = [
        i.value if i is not None and i.computable else p.latency.fastest for p, i in zip(points, spans)
    ]
    if not any(i is not None and i.computable for i in spans):
        return centres, None
    return centres, _spans(centres, spans)


def _spans(centres: Sequence[float], intervals: Sequence[Interval | None]) -> list[list[float]]:
    """matplotlib's yerr (below, above) for intervals around ``centres``: never negative, zero where
    an interval is missing or not computable."""
    below, above = [], []
    for c, i in zip(centres, intervals):
        known = i is not None and i.computable
        below.append(max(0.0, c - i.low) if known else 0.0)
        above.append(max(0.0, i.high - c) if known else 0.0)
    return [below, above]


def _plain_log_axis(ax, axis: str = "y") -> None:
    """Log scale with plain tick labels (2, 5, 10 rather than 2×10⁰)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _save(plt, fig, path: Path, layout: bool = True) -> Path:
    if layout:
        fig.tight_layout()
    fileio.write_with(path, lambda tmp: fig.savefig(tmp, dpi=_DPI, format="png"))
    plt.close(fig)
    return path
