"""Output files of ``coto-tools shapley --interactions``: ``interactions.csv``,
``interactions.json`` and the players x players heatmap (``interaction_heatmap.png``), and, for
several checkpoints, the heatmaps side by side on one colour scale
(``interaction_heatmaps.png``).

Colours: blue (negative) = the two players stand in for each other (redundant), red
(positive) = they need each other; in a sampled run, pairs whose 95% interval excludes 0 carry
a star (numbers shown, up to 10 players) or a dot.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coto_tools.adapters.atomic import atomic_write_text
from coto_tools.jsonio import dumps_strict
from coto_tools.plotting import cell_format
from coto_tools.shapley.interactions import Interactions
from coto_tools.shapley.plots import _short, save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INTER_CSV_FILE = "interactions.csv"
INTER_JSON_FILE = "interactions.json"
INTER_HEATMAP_FILE = "interaction_heatmap.png"
COMPARE_INTER_FILE = "interaction_heatmaps.png"
INTER_LABEL = "pairwise Faith-Shap interaction"


def interactions_csv(inter: Interactions, names: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["player_a", "player_b", "value", "std_error", "ci_low", "ci_high"])
    for i, j in zip(*np.triu_indices(inter.n_players, 1), strict=True):
        w.writerow([names[int(i)], names[int(j)]] + [repr(float(a[i, j])) for a in
                   (inter.pairs, inter.pair_se, inter.pair_low, inter.pair_high)])  # fmt: skip
    return buf.getvalue()


def plot_interactions(
    inter: Interactions,
    names: Sequence[str],
    ax: Axes | None = None,
    *,
    vmax: float | None = None,
    title: str = "",
    colorbar: bool = True,
    fmt: str | None = None,
) -> Figure:
    """Players x players heatmap of the pairwise indices, centred at 0 (diagonal blank)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    n = inter.n_players
    if ax is None:
        side = 2.0 + 0.55 * n
        fig, ax = plt.subplots(figsize=(side + 1.2, side))
    else:
        fig = ax.figure  # type: ignore[assignment]
    m = inter.pairs
    finite = m[np.isfinite(m)]
    scale = vmax if vmax is not None else (float(np.abs(finite).max()) if finite.size else 1.0)
    scale = scale if scale > 0 else 1.0
    im = ax.imshow(
        np.ma.masked_invalid(m),
        cmap="RdBu_r",
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-scale, vmax=scale),
        aspect="equal",
    )
    labels = [_short(x) for x in names]
    ax.set_xticks(range(n), labels, rotation=90 if max(map(len, labels)) > 3 else 0, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    fmt = fmt or cell_format(finite)
    sig = (inter.pair_low > 0) | (inter.pair_high < 0)
    for i in range(n):
        for j in range(n):
            v = m[i, j]
            if not np.isfinite(v):
                continue
            dark = abs(v) > 0.6 * scale
            colour = "white" if dark else "black"
            if n <= 10:
                text = fmt.format(v) + ("*" if sig[i, j] and not inter.exact else "")
                size = 9 if n <= 6 else (8 if n <= 8 else 6)  # readable at report width
                ax.text(j, i, text, ha="center", va="center", fontsize=size, color=colour)
            elif sig[i, j] and not inter.exact:
                ax.plot(j, i, marker=".", ms=3, color=colour)
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        fig.colorbar(im, ax=ax, label=INTER_LABEL, shrink=0.8)
    return fig


def plot_interaction_panels(
    panels: Sequence[tuple[str, Interactions, Sequence[str]]], *, ncols: int | None = None
) -> Figure:
    """Several interaction heatmaps on one colour scale (``max |pair|`` over all panels)."""
    import matplotlib.pyplot as plt

    vals = [np.abs(i.pairs[np.isfinite(i.pairs)]) for _, i, _ in panels]
    vmax = max((float(v.max()) for v in vals if v.size), default=1.0)
    fmt = cell_format(np.concatenate(vals) if vals else [])
    ncols = max(1, min(len(panels), ncols or 2))
    nrows = -(-len(panels) // ncols)
    n = max(i.n_players for _, i, _ in panels)
    side = 2.2 + 0.55 * n
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * side + 1.5, nrows * side), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    flat = [ax for row in axes for ax in row]
    for ax, (title, inter, names) in zip(flat, panels, strict=False):
        plot_interactions(inter, names, ax, vmax=vmax, title=title, colorbar=False, fmt=fmt)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    fig.colorbar(
        flat[0].images[0], ax=flat, shrink=0.8,
        label="pairwise interaction (< 0: redundant)",
    )  # fmt: skip
    return fig


def write_interactions(
    out: Path, inter: Interactions, names: Sequence[str], run_info: dict[str, Any], *,
    figures: bool = True,
) -> dict[str, Path]:  # fmt: skip
    """``interactions.csv``, ``interactions.json`` and (with ``figures``) the heatmap."""
    doc = {"format": "coto-tools/shapley-interactions", "version": 1, **run_info}
    doc |= inter.to_dict()
    files = {
        "interactions_csv": atomic_write_text(out / INTER_CSV_FILE, interactions_csv(inter, names)),
        "interactions_json": atomic_write_text(
            out / INTER_JSON_FILE, dumps_strict(doc, indent=2) + "\n"
        ),
    }
    if figures:
        title = (
            f"{Path(str(run_info.get('checkpoint', ''))).name}: {inter.metric} "
            f"({'exact' if inter.exact else f'{inter.coalitions} coalitions'})"
        )
        files["interaction_heatmap"] = save_figure(
            plot_interactions(inter, names, title=title), out / INTER_HEATMAP_FILE
        )
    return files


def write_interaction_comparison(
    out: Path, panels: Sequence[tuple[str, Interactions, Sequence[str]]]
) -> Path:
    """``interaction_heatmaps.png``: the runs' heatmaps side by side on one colour scale."""
    out.mkdir(parents=True, exist_ok=True)
    return save_figure(plot_interaction_panels(panels), out / COMPARE_INTER_FILE)
