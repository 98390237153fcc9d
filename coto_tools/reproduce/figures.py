"""Figures of a reproduction, LoRA beside CoTo. One function per figure; each takes a stage
summary (plain JSON data), returns the figure and never calls ``show()``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coto_tools.adapters.atomic import atomic_path
from coto_tools.plotting import METHOD_COLORS as COLORS
from coto_tools.plotting import METHOD_NAMES as NAMES
from coto_tools.plotting import (
    METHOD_ORDER,
    SPACE_STYLES,
    bars_from_zero,
    error_bars,
    legend_outside,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["COLORS", "METHOD_ORDER", "NAMES"]  # the shared style, re-exported


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Figure, path: Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    plt = _plt()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def single_figure(rows: Sequence[Mapping[str, Any]], zero_shot: float | None) -> Figure:
    """Accuracy of each adapter (dots) and the mean per method (bar), zero-shot as a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for i, m in enumerate(METHOD_ORDER):
        acc = [r["accuracy"] for r in rows if r["method"] == m]
        mean, sd = _mean_sd(acc)
        yerr = error_bars([sd], [len(acc)])
        # the method's full colour, as in the pruning and cross-task bars; seeds as open dots
        ax.bar(i, mean, yerr=yerr, color=COLORS[m], capsize=4, width=0.6)
        ax.plot([i] * len(acc), acc, "o", mfc="white", mec="black", mew=0.8, ms=5)
    if zero_shot is not None:
        ax.axhline(zero_shot, color="0.4", ls="--", lw=1, label=f"zero-shot {zero_shot:.3f}")
    ax.set_xticks(range(len(METHOD_ORDER)), [NAMES[m] for m in METHOD_ORDER])
    ax.set_ylabel("accuracy")
    ax.set_title("Single-task accuracy (dots: seeds; bars: mean ± sd)", fontsize=9)
    ax.set_ylim(0.0, 1.0)  # bars start at 0
    legend_outside(ax)
    return fig


def _zoom(ax: Any, values: Sequence[float]) -> None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if v:
        lo, hi = min(v), max(v)
        pad = max(0.02, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.02, hi + pad) if hi <= 1.0 else hi + pad)


def merge_figure(summary: Mapping[str, Any]) -> Figure:
    """Accuracy against merge ratio (0:1 = single adapters), one line per merge variant
    (solid: plain parameter average, dashed: PEFT linear, dotted: exact delta average), mean
    ± sd over disjoint seed groups."""
    plt = _plt()
    present = {r["label"] for r in summary["merges"]}
    ratios = ["0:1", *(r for r in ("1:2", "1:1", "1:1:1") if r in present)]  # no empty tick
    fig, ax = plt.subplots(figsize=(6.8, 3.8))
    allv: list[float] = []
    styles = {"param-average": "-", "peft-linear": "--", "delta-average": ":"}
    for m in METHOD_ORDER:
        for variant, style in styles.items():
            xs, ys, es, ns = [], [], [], []
            for i, ratio in enumerate(ratios):
                if ratio == "0:1":
                    acc = [r["accuracy"] for r in summary["singles"] if r["method"] == m]
                else:
                    acc = [
                        r["accuracy"]
                        for r in summary["merges"]
                        if r["method"] == m and r["label"] == ratio and _variant(r) == variant
                    ]
                if acc:
                    mean, sd = _mean_sd(acc)
                    xs.append(i)
                    ys.append(mean)
                    es.append(sd)
                    ns.append(len(acc))
                    allv += acc
            if len(xs) < 2:
                continue
            ax.errorbar(
                xs,
                ys,
                yerr=error_bars(es, ns),
                fmt=style,
                marker=_MARKERS.get(variant, "o"),
                color=COLORS[m],
                capsize=3,
                label=f"{NAMES[m]} ({variant})",
            )
    ax.set_xticks(range(len(ratios)), ratios)
    ax.set_xlabel("merge ratio of seeds (0:1 = no merge)")
    ax.set_ylabel(f"accuracy ({summary['split']} split)")
    ax.set_title("Merging adapters of different seeds (disjoint seed groups)", fontsize=9)
    _zoom(ax, allv)
    legend_outside(ax, fontsize=7)
    ax.grid(alpha=0.3)
    return fig


_MARKERS = {"param-average": "o", "peft-linear": "s", "delta-average": "^"}  # one per line style


def _variant(row: Mapping[str, Any]) -> str:
    from coto_tools.reproduce.claims import merge_variant

    return merge_variant(row)


def cross_figure(summary: Mapping[str, Any]) -> Figure:
    """Accuracy of cross-task merges on each task (bars: mean over seeds), with each task's own
    adapters as reference."""
    plt = _plt()
    tasks = list(summary["tasks"])
    labels = sorted({r["label"] for r in summary["merges"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        groups = ["own adapter", *labels]
        width = 0.38
        for j, m in enumerate(METHOD_ORDER):
            means, sds, ns = [], [], []
            for g in groups:
                if g == "own adapter":
                    acc = [
                        r["accuracy"]
                        for r in summary["singles"]
                        if r["method"] == m and r["task"] == task
                    ]
                else:
                    acc = [
                        r["accuracy"]
                        for r in summary["merges"]
                        if r["method"] == m and r["label"] == g and r["eval_task"] == task
                    ]
                mean, sd = _mean_sd(acc)
                means.append(mean)
                sds.append(sd)
                ns.append(len(acc))
            x = np.arange(len(groups)) + (j - 0.5) * width
            ax.bar(x, means, width, yerr=error_bars(sds, ns), color=COLORS[m], capsize=3,
                   label=NAMES[m])  # fmt: skip
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_title(f"evaluated on {task}", fontsize=9)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        bars_from_zero(ax)
    legend_outside(axes[0][-1])
    fig.suptitle("Cross-task merging", fontsize=10)
    fig.tight_layout()
    return fig


def shapley_mean_figure(rows: Sequence[Mapping[str, Any]], *, metric: str) -> Figure:
    """Mean Shapley heatmap per method (over seeds), LoRA beside CoTo on one colour scale."""
    from coto_tools.adapters.players import Players
    from coto_tools.shapley.plots import heatmap_grid, plot_heatmaps

    panels = []
    for m in METHOD_ORDER:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        players = Players(tuple(mine[0]["players"]), tuple(tuple(x) for x in mine[0]["members"]))
        values = np.mean([r["values"] for r in mine], axis=0)
        panels.append((f"{NAMES[m]} (mean of {len(mine)} seed(s))", heatmap_grid(players, values)))
    return plot_heatmaps(panels, label=f"Shapley value ({metric})")


def interactions_mean_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Mean pairwise Faith-Shap interactions per method (over seeds), players x players, LoRA
    beside CoTo on one colour scale (blue: the two layers stand in for each other)."""
    from coto_tools.shapley.interaction_outputs import plot_interaction_panels
    from coto_tools.shapley.interactions import average_interactions, interactions_from_dict

    panels = []
    for m in METHOD_ORDER:
        mine = [r for r in rows if r["method"] == m and r.get("interactions")]
        if not mine:
            continue
        names = list(mine[0]["players"])
        items = [interactions_from_dict(r["interactions"], names) for r in mine]
        red = np.mean([i.redundancy() or 0.0 for i in items])
        title = f"{NAMES[m]} (mean of {len(mine)} seed(s); redundancy {red:.3f})"
        panels.append((title, average_interactions(items), names))
    return plot_interaction_panels(panels)


def lmc_figure(summary: Mapping[str, Any]) -> Figure:
    """Rows: LoRA, CoTo; columns: accuracy, loss; one line per seed pair, solid = delta
    space, dashed = factor space; shared y axes so the methods compare directly."""
    plt = _plt()
    metrics = ("accuracy", "loss")
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharey="col", squeeze=False)
    for i, m in enumerate(METHOD_ORDER):
        pairs = [p for p in summary["pairs"] if p["method"] == m]
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for k, p in enumerate(pairs):
                color = COLORS[m]
                for space, style in SPACE_STYLES.items():
                    cv = p["curves"].get(space)
                    if cv is None:
                        continue
                    b = p["barriers"][space][metric]["barrier"]
                    bt = "nan" if b is None else f"{b:.3g}"
                    ax.plot(
                        cv["a"],
                        cv[metric],
                        ls=style["ls"],
                        marker=style["marker"],
                        ms=3,
                        color=color,
                        alpha=max(0.35, 1.0 - 0.25 * k),  # later seed pairs lighter
                        label=f"s{p['seeds'][0]}-s{p['seeds'][1]} {space}: barrier {bt}",
                    )
            ax.set_title(f"{NAMES[m]}: {metric}", fontsize=9)
            ax.set_xlabel("a (0 = first seed, 1 = second)")
            ax.grid(alpha=0.3)
            legend_outside(ax, fontsize=6)
    fig.suptitle(f"Linear mode connectivity between seeds ({summary['split']} split)")
    fig.tight_layout()
    return fig


def learning_curve_figure(curves: Mapping[str, Any]) -> Figure:
    """Training loss per step of every main run (thin: per step; thick: moving mean over a
    tenth of the steps), LoRA beside CoTo on shared log axes; the shaded span is the last 20%
    of steps, the two windows the plateau rule compares."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True, squeeze=False)
    runs = [r for r in curves.get("runs", {}).values() if r.get("role", "main") == "main"]
    for ax, m in zip(axes[0], METHOD_ORDER, strict=True):
        mine = sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"])
        done = sum(1 for r in mine if (r.get("plateau") or {}).get("plateaued"))
        for k, r in enumerate(mine):
            ls = np.asarray(r["losses"], dtype=np.float64)
            x = np.arange(1, ls.size + 1)
            w = max(1, ls.size // 10)
            smooth = np.convolve(ls, np.ones(w) / w, mode="valid")
            color = COLORS[m]  # the method's colour; seeds differ by line style
            style = ("-", "--", ":", "-.")[k % 4]
            ax.plot(x, np.maximum(ls, 1e-6), lw=0.5, alpha=0.3, color=color, ls=style)
            ax.plot(x[w - 1 :], np.maximum(smooth, 1e-6), lw=1.6, color=color, ls=style,
                    label=f"seed {r['seed']}")  # fmt: skip
            if k == 0 and ls.size:
                ax.axvspan(0.8 * ls.size, ls.size, color="0.9", zorder=0)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"{NAMES[m]}: {done}/{len(mine)} runs plateaued", fontsize=9)
        ax.grid(alpha=0.3)
        if mine:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss (log scale)")
    fig.suptitle("Learning curves (plateau rule: the last two tenths of training)", fontsize=10)
    fig.tight_layout()
    return fig
