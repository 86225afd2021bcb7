"""The benchmarks' pictures, drawn with matplotlib's Agg canvas into PNG files (no display).

Each plots the raw per-request samples the run kept in memory: ``results.json`` and
``peers.json`` keep percentiles only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _box(axes: Axes, samples: Mapping[str, Sequence[float]], ylabel: str) -> None:
    """A box per route: the quartiles, whiskers at the 1st and 99th percentiles."""
    names = list(samples)
    axes.boxplot(
        [list(samples[name]) for name in names],
        whis=(1, 99),
        showfliers=False,
        tick_labels=[name.replace(" ", "\n", 1) for name in names],
    )
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", alpha=0.3)


def _cdf(axes: Axes, samples: Mapping[str, Sequence[float]], xlabel: str) -> None:
    for name, values in samples.items():
        ordered = sorted(values)
        shares = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axes.step(ordered, shares, where="post", label=name)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("share of requests")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")


def _goal_lines(axes: Axes, goals: Mapping[str, float], vertical: bool) -> None:
    for label, value in goals.items():
        if vertical:
            axes.axvline(value, color="gray", linestyle="--", linewidth=0.8)
            axes.annotate(label, (value, 0.02), rotation=90, fontsize="x-small", color="gray")
        else:
            axes.axhline(value, color="gray", linestyle="--", linewidth=0.8)
            axes.annotate(label, (0.55, value), fontsize="x-small", color="gray")


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)


def plot_added_latency(
    samples: Mapping[str, Sequence[float]], goals: Mapping[str, float], path: Path
) -> None:
    """``samples``: by route, each request's time through the sidecar minus the direct call
    made just before it (ms). ``goals``: lines to draw, by label (ms)."""
    figure = Figure(figsize=(12, 5))
    box, cdf = figure.subplots(1, 2, width_ratios=(3, 2))
    _box(box, samples, "added latency per request (ms): sidecar minus the direct call")
    _goal_lines(box, goals, vertical=False)
    box.set_title("Added latency by route (box: quartiles; whiskers: p1 and p99)")
    _cdf(cdf, samples, "added latency (ms)")
    low, high = _span(samples)
    cdf.set_xlim(low, high)
    _goal_lines(cdf, goals, vertical=True)
    cdf.set_title("Distribution")
    _save(figure, path)


def plot_peers(
    added: Mapping[str, Sequence[float]],
    latency: Mapping[str, Sequence[float]],
    rates: Mapping[str, Mapping[str, float]],
    path: Path,
) -> None:
    """LiteLLM's proxy beside the sidecar: ``added`` (each proxy's request minus the direct one
    of the same round, ms), ``latency`` (every route's own, ms) and ``rates`` (requests/s by
    concurrency label, then by route)."""
    figure = Figure(figsize=(15, 5))
    box, cdf, bars = figure.subplots(1, 3)
    _box(box, added, "added latency per request (ms): proxy minus the direct call")
    box.set_title("Added latency (box: quartiles; whiskers: p1 and p99)")
    _cdf(cdf, latency, "latency (ms)")
    cdf.set_xlim(0, _span(latency)[1])
    cdf.set_title("Latency, 100 passages")
    concurrencies = list(rates)
    routes = list(rates[concurrencies[0]])
    width = 0.8 / len(routes)
    for index, route in enumerate(routes):
        positions = [c + index * width for c in range(len(concurrencies))]
        bars.bar(positions, [rates[c][route] for c in concurrencies], width, label=route)
    bars.set_xticks([c + 0.4 - width / 2 for c in range(len(concurrencies))], concurrencies)
    bars.set_ylabel("requests/s")
    bars.set_title("Throughput")
    bars.legend(fontsize="small")
    bars.grid(axis="y", alpha=0.3)
    _save(figure, path)


def _span(samples: Mapping[str, Sequence[float]]) -> tuple[float, float]:
    """From the lowest 1st percentile to the highest 99.5th: the outliers would hide the rest."""
    lows, highs = [], []
    for values in samples.values():
        ordered = sorted(values)
        lows.append(ordered[int(0.01 * (len(ordered) - 1))])
        highs.append(ordered[int(0.995 * (len(ordered) - 1))])
    low, high = min(lows), max(highs)
    margin = (high - low) * 0.05 or 1.0
    return low - margin, high + margin
