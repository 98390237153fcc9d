"""Figures of a reproduction, LoRA beside CoTo. One function per figure; each takes a stage
summary (plain JSON data), returns the figure and never calls ``show()``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coto_tools.adapters.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHOD_ORDER = ("lora", "coto")
COLORS = {"lora": "#1f77b4", "coto": "#d62728"}
NAMES = {"lora": "LoRA", "coto": "CoTo"}


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
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for i, m in enumerate(METHOD_ORDER):
        acc = [r["accuracy"] for r in rows if r["method"] == m]
        mean, sd = _mean_sd(acc)
        ax.bar(i, mean, yerr=sd, color=COLORS[m], alpha=0.5, capsize=4)
        ax.plot([i] * len(acc), acc, "o", color=COLORS[m])
    if zero_shot is not None:
        ax.axhline(zero_shot, color="0.4", ls="--", lw=1, label=f"zero-shot {zero_shot:.3f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(range(len(METHOD_ORDER)), [NAMES[m] for m in METHOD_ORDER])
    ax.set_ylabel("accuracy")
    ax.set_title("Single-task accuracy (dots: seeds; bars: mean ± sd)", fontsize=9)
    _zoom(ax, [r["accuracy"] for r in rows] + ([zero_shot] if zero_shot is not None else []))
    return fig


def _zoom(ax: Any, values: Sequence[float]) -> None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if v:
        lo, hi = min(v), max(v)
        pad = max(0.02, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.02, hi + pad) if hi <= 1.0 else hi + pad)


def merge_figure(summary: Mapping[str, Any]) -> Figure:
    """Accuracy against merge ratio (0:1 = single adapters), factor (dashed) and delta space
    (solid), mean ± sd over seeds / seed combinations."""
    plt = _plt()
    ratios = ["0:1", "1:2", "1:1", "1:1:1"]
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    allv: list[float] = []
    for m in METHOD_ORDER:
        for space, style in (("factor", "--"), ("delta", "-")):
            xs, ys, es = [], [], []
            for i, ratio in enumerate(ratios):
                if ratio == "0:1":
                    acc = [r["accuracy"] for r in summary["singles"] if r["method"] == m]
                else:
                    acc = [
                        r["accuracy"]
                        for r in summary["merges"]
                        if r["method"] == m and r["label"] == ratio and r["space"] == space
                    ]
                if acc:
                    mean, sd = _mean_sd(acc)
                    xs.append(i)
                    ys.append(mean)
                    es.append(sd)
                    allv += acc
            ax.errorbar(
                xs,
                ys,
                yerr=es,
                fmt=style,
                marker="o",
                color=COLORS[m],
                capsize=3,
                label=f"{NAMES[m]} ({space})",
            )
    ax.set_xticks(range(len(ratios)), ratios)
    ax.set_xlabel("merge ratio of seeds (0:1 = no merge)")
    ax.set_ylabel(f"accuracy ({summary['split']} split)")
    ax.set_title("Merging adapters of different seeds", fontsize=9)
    _zoom(ax, allv)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


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
            means, sds = [], []
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
            x = np.arange(len(groups)) + (j - 0.5) * width
            ax.bar(x, means, width, yerr=sds, color=COLORS[m], alpha=0.7, capsize=3, label=NAMES[m])
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_title(f"evaluated on {task}", fontsize=9)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
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
                color = plt.rcParams["axes.prop_cycle"].by_key()["color"][k % 10]
                for space, style in (("delta", "-"), ("factor", "--")):
                    cv = p["curves"].get(space)
                    if cv is None:
                        continue
                    b = p["barriers"][space][metric]["barrier"]
                    bt = "nan" if b is None else f"{b:.3g}"
                    ax.plot(
                        cv["a"],
                        cv[metric],
                        style,
                        marker="o",
                        ms=3,
                        color=color,
                        label=f"s{p['seeds'][0]}-s{p['seeds'][1]} {space}: barrier {bt}",
                    )
            ax.set_title(f"{NAMES[m]}: {metric}", fontsize=9)
            ax.set_xlabel("a (0 = first seed, 1 = second)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.suptitle(f"Linear mode connectivity between seeds ({summary['split']} split)")
    fig.tight_layout()
    return fig
