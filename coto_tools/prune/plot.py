"""Pruning figures: grouped strategy bars (as in the CoTo paper, arXiv 2506.05713) and curves.

Each function takes ``ax``/``axes=None``, returns the figure and never calls ``show()``. Bars and
curves are means over the checkpoints of a label; error bars are the standard deviation over
those checkpoints (none with one checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from coto_tools.errors import OptionError
from coto_tools.plotting import (
    bars_from_zero,
    colors_for,
    display_name,
    error_bars,
    legend_outside,
)
from coto_tools.prune.run import PruneResult
from coto_tools.prune.tables import curve_family

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_YLABEL = {"loss": "loss (cross-entropy)", "accuracy": "accuracy", "logprob": "mean log p(true)"}


def _mean_sd(rows: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(rows, dtype=np.float64)
    sd = arr.std(axis=0, ddof=1) if arr.shape[0] > 1 else np.zeros(arr.shape[1:])
    return arr.mean(axis=0), sd


def plot_strategies(
    result: PruneResult, *, metric: str | None = None, ax: Axes | None = None
) -> Figure:
    """Grouped bars: one group per strategy (plus ``none``), one bar per label."""
    import matplotlib.pyplot as plt

    metric = metric or result.metric
    names = [
        "none",
        *dict.fromkeys(
            s.strategy.name
            for c in result.checkpoints
            for s in c.strategies
            if s.strategy.name != "none"  # requested with --strategies none: shown once
        ),
    ]
    labels = result.labels
    if ax is None:
        width_in = 1.5 + len(names) * (0.45 + 0.2 * len(labels))
        fig, ax = plt.subplots(figsize=(min(max(6.0, width_in), 16.0), 4.0))
    else:
        fig = ax.figure  # type: ignore[assignment]
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(names))
    tops: list[float] = []
    colors = colors_for(labels)
    for j, lab in enumerate(labels):
        means, sds = [], []
        for name in names:
            per_ck = []
            for c in (c for c in result.checkpoints if c.label == lab):
                if name == "none":
                    per_ck.append(c.empty.get(metric))
                    continue
                vs = [s.metrics.get(metric) for s in c.strategies if s.strategy.name == name]
                if vs:
                    per_ck.append(float(np.mean(vs)))
            m, s = (
                _mean_sd([[v] for v in per_ck]) if per_ck else (np.array([np.nan]), np.array([0.0]))
            )
            means.append(float(m[0]))
            sds.append(float(s[0]))
            tops += [means[-1] - sds[-1], means[-1] + sds[-1]]
        k = sum(c.label == lab for c in result.checkpoints)
        ax.bar(x + (j - (len(labels) - 1) / 2) * width, means, width,
               yerr=error_bars(sds, [k]), capsize=3, color=colors[j],
               label=f"{display_name(lab)} (n={k})")  # fmt: skip
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel(_YLABEL.get(metric, metric))
    ax.set_title(f"Pruning strategies ({metric})")
    bars_from_zero(ax, [t for t in tops if np.isfinite(t)])
    legend_outside(ax)
    fig.tight_layout()
    return fig


def plot_curves(
    result: PruneResult, *, metric: str | None = None, axes: Sequence[Axes] | None = None
) -> Figure:
    """One panel per sweep order (random seeds pooled) and one for the rank sweep; one line per
    label (mean over its checkpoints, error bars: sd over checkpoints)."""
    import matplotlib.pyplot as plt

    metric = metric or result.metric
    fams = list(dict.fromkeys(curve_family(cv.name) for c in result.checkpoints for cv in c.curves))
    has_rank = any(c.rank is not None for c in result.checkpoints)
    panels = fams + (["rank"] if has_rank else [])
    if not panels:
        raise OptionError("no fraction sweeps and no rank sweep were computed: nothing to plot")
    colors = colors_for(result.labels)
    if axes is None:
        fig, arr = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        axes = list(arr[0])
    else:
        fig = axes[0].figure  # type: ignore[assignment]
    for ax, panel in zip(axes, panels, strict=True):
        for lab, color in zip(result.labels, colors, strict=True):
            cks = [c for c in result.checkpoints if c.label == lab]
            style: dict[str, Any] = {"marker": "o", "ms": 3, "capsize": 2, "color": color,
                                     "label": display_name(lab)}  # fmt: skip
            if panel == "rank":
                ranked = [c.rank for c in cks if c.rank is not None]
                if not ranked:
                    continue
                rks = ranked[0].ranks
                same_rk = [rc.values(metric) for rc in ranked if rc.ranks == rks]
                m, s = _mean_sd(same_rk)
                ax.errorbar(rks, m, yerr=error_bars(s, [len(same_rk)]), **style)
                ax.set_xscale("log", base=2)
                ax.set_xticks(list(rks), [str(r) for r in rks])
                ax.set_xlabel("rank kept per adapter")
                continue
            rows: list[np.ndarray] = []
            xs: np.ndarray | None = None
            for c in cks:
                curves = [cv for cv in c.curves if curve_family(cv.name) == panel]
                if not curves:
                    continue
                xs = curves[0].fractions
                same = [cv.values(metric) for cv in curves if np.array_equal(cv.fractions, xs)]
                rows.append(np.mean(same, axis=0))
            if xs is None:
                continue
            m, s = _mean_sd(rows)
            ax.errorbar(xs, m, yerr=error_bars(s, [len(rows)]), **style)
            ax.set_xlabel("fraction of adapters removed")
        ax.set_title(panel)
        ax.set_ylabel(_YLABEL.get(metric, metric))
        ax.grid(alpha=0.3)
    legend_outside(axes[-1])
    fig.tight_layout()
    return fig
