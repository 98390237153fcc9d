"""Figures of a Shapley run: the kind x layer heatmap and the convergence of the estimates.

One function per figure; each takes ``ax=None`` (or a list of axes) and returns the figure, never
calls ``show()``. :func:`save_figure` writes a PNG atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coto_tools.adapters.atomic import atomic_path
from coto_tools.adapters.keys import parse_module_name
from coto_tools.adapters.players import OTHER, Players
from coto_tools.plotting import LAYER_AXIS, cell_format

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from coto_tools.shapley.result import ShapleyResult

ALL = "all"


@dataclass(frozen=True)
class HeatGrid:
    """Values laid out as ``matrix (rows, cols)``: rows = tower/kind, cols = layers (NaN: none)."""

    rows: tuple[str, ...]
    cols: tuple[str, ...]
    matrix: np.ndarray


def player_cell(members: Sequence[str]) -> tuple[str, str, str]:
    """(tower, kind, layer) of a player: a field shared by all members, else ``"all"``."""
    keys = [parse_module_name(m) for m in members]
    towers = {k.tower for k in keys}
    kinds = {k.kind for k in keys}
    layers = {k.layer for k in keys}
    tower = next(iter(towers)) if len(towers) == 1 else ALL
    kind = str(next(iter(kinds))) if len(kinds) == 1 and None not in kinds else ALL
    layer = str(next(iter(layers))) if len(layers) == 1 and None not in layers else ALL
    return tower, kind, layer


def _unplaced(members: Sequence[str]) -> bool:
    """Whether no member has a parsed layer (the ``other`` player of a layer/kind grouping)."""
    return all(parse_module_name(m).layer is None for m in members)


def heatmap_grid(players: Players, values: np.ndarray) -> HeatGrid:
    """Lay ``values (n_players,)`` out by (tower, kind) rows and layer columns.

    Layer columns are labelled with the module's layer index (0-based, as in ``shapley.csv``
    and the pruning strategies); a player spanning several layers
    (kind or tower players) goes to column ``all``, one spanning several kinds to row ``all``.
    """
    cells = [
        (OTHER, OTHER, ALL) if _unplaced(m) else player_cell(m) for m in players.members
    ]  # modules with no layer (the "other" player, e.g. a pooler): one row "other", column all
    towers = {t for t, _, _ in cells if t != OTHER}
    row_of = [k if len(towers) <= 1 or t == OTHER else f"{t}.{k}" for t, k, _ in cells]
    rows = tuple(dict.fromkeys(row_of))
    layer_ids = sorted({int(lay) for _, _, lay in cells if lay != ALL})
    cols = tuple(str(i) for i in layer_ids) + ((ALL,) if any(c[2] == ALL for c in cells) else ())
    col_of = [ALL if lay == ALL else str(int(lay)) for _, _, lay in cells]
    matrix = np.full((len(rows), len(cols)), np.nan)
    for r, c, v in zip(row_of, col_of, values, strict=True):
        i, j = rows.index(r), cols.index(c)
        matrix[i, j] = v if np.isnan(matrix[i, j]) else matrix[i, j] + v
    return HeatGrid(rows, cols, matrix)


def plot_heatmap(
    grid: HeatGrid,
    ax: Axes | None = None,
    *,
    vmax: float | None = None,
    title: str = "",
    colorbar: bool = True,
    label: str = "Shapley value",
    fmt: str | None = None,
) -> Figure:
    """Diverging heatmap centred at 0 with annotated values (cells without a player blank).

    ``fmt``: the format of every cell's number (default: :func:`coto_tools.plotting.cell_format`
    of this grid; :func:`plot_heatmaps` passes one format for all its panels)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(grid.cols), 1.2 + 0.6 * len(grid.rows)))
    else:
        fig = ax.figure  # type: ignore[assignment]
    finite = grid.matrix[np.isfinite(grid.matrix)]
    scale = vmax if vmax is not None else (float(np.abs(finite).max()) if finite.size else 1.0)
    scale = scale if scale > 0 else 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-scale, vmax=scale)
    im = ax.imshow(np.ma.masked_invalid(grid.matrix), cmap="RdBu_r", norm=norm, aspect="auto")
    ax.set_xticks(range(len(grid.cols)), grid.cols)
    ax.set_yticks(range(len(grid.rows)), grid.rows)
    ax.set_xlabel(LAYER_AXIS)
    fmt = fmt or cell_format(finite)
    size = 9 if len(grid.cols) <= 8 else 7  # a 6-layer grid is shown small on the report page
    for i in range(len(grid.rows)):
        for j in range(len(grid.cols)):
            v = grid.matrix[i, j]
            if np.isfinite(v):
                dark = abs(v) > 0.6 * scale
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=size,
                        color="white" if dark else "black")  # fmt: skip
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        fig.colorbar(im, ax=ax, label=label, shrink=0.8)
    return fig


def plot_heatmaps(
    panels: Sequence[tuple[str, HeatGrid]],
    *,
    label: str = "Shapley value",
    ncols: int | None = None,
) -> Figure:
    """Several heatmaps on one colour scale (``max |value|`` over all panels) and one number
    format, ``ncols`` per row (default: 2, so that each stays readable at page width)."""
    import matplotlib.pyplot as plt

    vals = [np.abs(g.matrix[np.isfinite(g.matrix)]) for _, g in panels]
    vmax = max((float(v.max()) for v in vals if v.size), default=1.0)
    fmt = cell_format(np.concatenate(vals) if vals else [])
    ncols = max(1, min(len(panels), ncols or 2))
    nrows = -(-len(panels) // ncols)
    width = ncols * (1.0 + 0.9 * max(len(g.cols) for _, g in panels)) + 1.5
    height = nrows * (1.8 + 0.6 * max(len(g.rows) for _, g in panels))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained"
    )  # constrained: a row's titles never run into the tick labels of the row above
    flat = [ax for row in axes for ax in row]
    for ax, (title, grid) in zip(flat, panels, strict=False):
        plot_heatmap(grid, ax, vmax=vmax, title=title, colorbar=False, fmt=fmt)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    mappable = flat[0].images[0]
    fig.colorbar(mappable, ax=flat, label=label, shrink=0.8)
    return fig


def plot_convergence(result: ShapleyResult, ax: Axes | None = None, *, top: int = 8) -> Figure:
    """Running estimates of the ``top`` players (largest final |value|) against evaluations,
    with +-1 standard error bands."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure  # type: ignore[assignment]
    tr = result.trace
    names = result.player_names or tuple(str(i) for i in range(result.n_players))
    order = np.argsort(-np.abs(result.values))[:top]
    if len(tr.evaluations) < 2:  # one estimate (exact): no running curve to draw
        y = np.arange(len(order))[::-1]
        ax.barh(y, result.values[order], color="0.55")
        ax.set_yticks(y, [_short(names[i]) for i in order], fontsize=7)
        ax.axvline(0.0, color="grey", lw=0.6)
        ax.set_xlabel(f"Shapley value ({result.metric})")
        ax.set_title(f"{result.estimator}: {result.evaluations} evaluations, one final estimate "
                     f"(top {len(order)} players)", fontsize=9)  # fmt: skip
        return fig
    for i in order:
        est = tr.estimates[:, i]
        (line,) = ax.plot(tr.evaluations, est, marker="." if len(est) < 3 else None, lw=1.2,
                          label=_short(names[i]))  # fmt: skip
        se = tr.std_errors[:, i]
        ok = np.isfinite(se)
        if ok.any():
            ax.fill_between(tr.evaluations[ok], (est - se)[ok], (est + se)[ok],
                            color=line.get_color(), alpha=0.15, lw=0)  # fmt: skip
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_xlabel(
        "documents run, in whole-split evaluations"
        if result.estimator.endswith("-documents")
        else "evaluations (distinct coalitions)"
    )
    ax.set_ylabel(f"Shapley value ({result.metric})")
    ax.set_title(f"{result.estimator}: running estimates (top {len(order)} players, +-1 SE)",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=6, ncol=2, loc="best")
    return fig


def _short(name: str) -> str:
    for prefix in ("base_model.model.", "encoder.layer.", "model.layers."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace("attention.self.", "").replace("self_attn.", "")


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 130) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
