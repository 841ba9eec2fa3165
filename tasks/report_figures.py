"""The report's figures, drawn with matplotlib and written as PNG and SVG.

Each function takes small, already aggregated data (bin counts, the matched
model/human pairs, the analysis result dict) and writes ``<out>/figures/<name>.png``
and ``.svg`` (the SVG for papers; the PNG is what the HTML page shows). Returns
the names written, relative to ``out``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

FIGURES_DIR = "figures"
_STYLE = {"figure.dpi": 110, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
          "svg.fonttype": "none", "svg.hashsalt": "memscore"}


def _save(fig: "plt.Figure", out: Path, name: str) -> dict[str, str]:
    folder = out / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in ("png", "svg"):
        fig.savefig(folder / f"{name}.{ext}", bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        paths[ext] = f"{FIGURES_DIR}/{name}.{ext}"
    plt.close(fig)
    return paths


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def histogram_figure(out: Path, edges: list[float], counts: list[int], summary: dict[str, Any],
                     model: str, name: str = "histogram") -> dict[str, str]:
    """One histogram of the scores (bin counts given) with mean and median marked."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        ax.stairs(counts, edges, fill=True, color="#4c72b0", alpha=0.85)
        if summary.get("mean") is not None:
            ax.axvline(summary["mean"], color="#c44e52", lw=1.2, label=f"mean {_fmt(summary['mean'])}")
            ax.axvline(summary["median"], color="#222222", lw=1.2, ls="--", label=f"median {_fmt(summary['median'])}")
            ax.legend(frameon=True, framealpha=0.9, edgecolor="none", loc="best")
        ax.set_xlabel(f"{model} memorability score")
        ax.set_ylabel("images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"Score distribution (n = {summary['n']:,})")
        return _save(fig, out, name)


def group_histograms_figure(out: Path, edges: list[float], groups: list[dict[str, Any]], label: str,
                            name: str = "histogram_groups") -> dict[str, str]:
    """Small multiples: one histogram per group (shared x axis), with n and median in each title."""
    n = len(groups)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), sharex=True, squeeze=False)
        for ax, g in zip(axes.flat, groups):
            ax.stairs(g["counts"], edges, fill=True, color="#55a868", alpha=0.85)
            ax.set_title(f"{g['group']} (n = {g['n']:,}, median {_fmt(g['summary']['median'])})", fontsize=8)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        fig.supxlabel("score")
        fig.supylabel("images")
        fig.suptitle(f"Score distribution per {label}")
        fig.tight_layout()
        return _save(fig, out, name)


def _ci(stat: dict[str, Any] | None, key: str) -> str:
    if not stat:
        return "n/a"
    low, high = stat.get("ci_low"), stat.get("ci_high")
    ci = f" [{_fmt(low)}, {_fmt(high)}]" if low is not None and high is not None else ""
    return f"{_fmt(stat.get(key))}{ci}"


def scatter_figure(out: Path, model_scores: np.ndarray, human_scores: np.ndarray, result: dict[str, Any],
                   model: str, measure: str, name: str = "scatter",
                   groups: np.ndarray | None = None) -> dict[str, str]:
    """Model score against human score, one point per matched image (a 2-D histogram above
    20,000 points), with the analysis' Spearman and Pearson and their bootstrap intervals."""
    conf = int(round(100 * ((result.get("bootstrap") or {}).get("confidence") or 0.95)))
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(4.8, 4.4))
        if len(model_scores) > 20_000:
            ax.hexbin(human_scores, model_scores, gridsize=60, mincnt=1, cmap="viridis", bins="log")
        elif groups is not None:
            for g in sorted(set(groups.tolist()), key=str):
                mask = groups == g
                ax.scatter(human_scores[mask], model_scores[mask], s=14, alpha=0.75, label=str(g))
            ax.legend(frameon=False, fontsize=7, loc="lower right")
        else:
            ax.scatter(human_scores, model_scores, s=14, alpha=0.7, color="#4c72b0", edgecolor="none")
        ax.set_xlabel(f"human {measure}")
        ax.set_ylabel(f"{model} score")
        text = (f"n = {result.get('n')}\nSpearman ρ = {_ci(result.get('spearman'), 'rho')}\n"
                f"Pearson r = {_ci(result.get('pearson'), 'r')}\n({conf}% bootstrap CI)")
        ax.text(0.0, -0.16, text.replace("\n(", "  ("), transform=ax.transAxes, va="top", fontsize=8)
        ax.set_title("Model vs human memorability")
        return _save(fig, out, name)


def ceiling_figure(out: Path, bars: list[tuple[str, float, float | None, float | None]],
                   name: str = "ceiling") -> dict[str, str]:
    """Bars of (label, value, ci_low, ci_high): the model's Spearman beside the human ceiling(s)."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        labels = [b[0] for b in bars]
        values = [b[1] for b in bars]
        colors = ["#4c72b0"] + ["#8c8c8c"] * (len(bars) - 1)
        ax.bar(range(len(bars)), values, color=colors, width=0.6)
        for i, (_, v, lo, hi) in enumerate(bars):
            if lo is not None and hi is not None:
                ax.errorbar(i, v, yerr=[[v - lo], [hi - v]], color="black", capsize=4, lw=1)
            top = hi if hi is not None else v
            ax.text(i, max(v, top) + 0.02, _fmt(v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(bars)), labels, fontsize=8)
        ax.set_ylim(min(0.0, min(values) - 0.1), 1.1)
        ax.set_ylabel("Spearman correlation")
        ax.set_title("Model against the human ceiling")
        return _save(fig, out, name)


def group_scatter_figure(out: Path, model_scores: np.ndarray, human_scores: np.ndarray, groups: np.ndarray,
                         stats: list[dict[str, Any]], name: str = "scatter_groups") -> dict[str, str]:
    """One scatter panel per group with that group's Spearman (from the analysis' ``groups``)."""
    by_group = {str(g.get("group")): g for g in stats}
    names = [str(g.get("group")) for g in stats]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
        for ax, g in zip(axes.flat, names):
            mask = groups.astype(str) == g
            ax.scatter(human_scores[mask], model_scores[mask], s=10, alpha=0.7, color="#4c72b0", edgecolor="none")
            sp = by_group[g].get("spearman")
            ax.set_title(f"{g}: n = {by_group[g].get('n')}, ρ = {_ci(sp, 'rho')}", fontsize=8)
        for ax in list(axes.flat)[len(names):]:
            ax.set_visible(False)
        fig.supxlabel("human")
        fig.supylabel("model")
        fig.tight_layout()
        return _save(fig, out, name)
