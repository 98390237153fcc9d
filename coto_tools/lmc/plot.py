"""LMC figures: curves along paths (several pairs in one figure) and a contour plot of a plane.

Each function takes ``ax``/``axes=None``, returns the figure and never calls ``show()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from coto_tools.lmc.result import LmcResult, PathKind, PlaneResult
from coto_tools.plotting import SPACE_STYLES, colors_for, display_name, legend_outside

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_YLABEL = {"loss": "loss (cross-entropy)", "accuracy": "accuracy", "logprob": "mean log p(true)"}


def plot_paths(
    results: Sequence[LmcResult],
    *,
    metrics: Sequence[str] = ("loss", "accuracy"),
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """One panel per metric; one colour per pair (a pair of one method, e.g. ``coto s0-s1``,
    takes that method's colour), solid circles = delta space, dashed squares = factor space.

    The legend gives each curve's barrier for the panel's metric (max over ``0 <= a <= 1``).
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, ax_arr = plt.subplots(
            1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False
        )
        axes = list(ax_arr[0])
    else:
        fig = axes[0].figure  # type: ignore[assignment]
    colors = colors_for([r.label for r in results])
    from_zero = any(r.kind is PathKind.from_zero for r in results)
    for ax, metric in zip(axes, metrics, strict=True):
        for k, res in enumerate(results):
            bars = res.barriers()
            for space, curve in res.curves.items():
                b = bars[space][metric].height
                style = SPACE_STYLES[space.value]
                ax.plot(
                    curve.a,
                    curve.values(metric),
                    ls=style["ls"],
                    color=colors[k],
                    marker=style["marker"],
                    markersize=3,
                    label=f"{display_name(res.label)} ({space.value}), barrier {b:.3g}",
                )
        for x in (0.0, 1.0):
            ax.axvline(x, color="0.75", lw=0.8, zorder=0)
        ax.set_xlabel("scale t (0 = base model, 1 = adapter)" if from_zero else "a (0 = A, 1 = B)")
        ax.set_ylabel(_YLABEL.get(metric, metric))
        ax.grid(alpha=0.3)
    legend_outside(axes[-1], fontsize=7)
    fig.suptitle("Linear mode connectivity" + (" from the base model" if from_zero else ""))
    fig.tight_layout()
    return fig


def plot_plane(
    plane: PlaneResult,
    *,
    metrics: Sequence[str] = ("loss", "accuracy"),
    axes: Sequence[Axes] | None = None,
    levels: int = 14,
) -> Figure:
    """Filled contours of each metric over the plane of three adapters (delta space), drawn with
    the plane's true geometry (:meth:`PlaneResult.xy`); the three adapters are marked."""
    import matplotlib.pyplot as plt
    import matplotlib.tri as mtri

    if axes is None:
        fig, ax_arr = plt.subplots(
            1, len(metrics), figsize=(5.6 * len(metrics), 4.6), squeeze=False
        )
        axes = list(ax_arr[0])
    else:
        fig = axes[0].figure  # type: ignore[assignment]
    xy = plane.xy()
    tri = mtri.Triangulation(xy[:, 0], xy[:, 1])
    uv = np.asarray(plane.points)
    corner_idx = [
        int(np.flatnonzero((uv[:, 0] == u) & (uv[:, 1] == v))[0])
        for u, v in ((0, 0), (1, 0), (0, 1))
    ]
    for ax, metric in zip(axes, metrics, strict=True):
        vals = plane.values(metric)
        finite = np.isfinite(vals)
        if finite.all():
            cs = ax.tricontourf(
                tri, vals, levels=levels, cmap="viridis" if metric != "loss" else "viridis_r"
            )
            ax.tricontour(tri, vals, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
            fig.colorbar(cs, ax=ax, label=_YLABEL.get(metric, metric))
        else:  # non-finite values cannot be contoured: show the points instead
            sc = ax.scatter(xy[finite, 0], xy[finite, 1], c=vals[finite], s=12)
            fig.colorbar(sc, ax=ax, label=_YLABEL.get(metric, metric))
        tri_xy = xy[corner_idx + corner_idx[:1]]
        ax.plot(tri_xy[:, 0], tri_xy[:, 1], color="w", lw=1.0, ls="--")
        for name, i in zip(plane.names, corner_idx, strict=True):
            ax.plot(xy[i, 0], xy[i, 1], "o", color="red", markeredgecolor="w", markersize=8)
            ax.annotate(
                f"{name}\n{vals[i]:.3g}",
                xy[i],
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
                color="w",
                bbox={"boxstyle": "round", "fc": "0.2", "alpha": 0.6},
            )
        ax.set_aspect("equal")
        ax.set_title(_YLABEL.get(metric, metric))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Plane through three adapters (delta space, true geometry)")
    fig.tight_layout()
    return fig
