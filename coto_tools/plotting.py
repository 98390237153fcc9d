"""One look for every figure: method colours and names, line styles per space, layer numbering,
the number format of heatmap cells, bars from zero, error bars only where there is a spread,
legends outside the data.

Every plotting module (``shapley/plots.py``, ``prune/plot.py``, ``lmc/plot.py``,
``reproduce/figures.py``) takes its styling from here, so that LoRA has the same colour and
spelling in the tour's figures and in the report, and layer 0 is layer 0 in heatmaps, CSV files
and strategy names alike. Matplotlib is imported lazily (importing this module is cheap).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies)
METHOD_COLORS = {"lora": "#0072B2", "coto": "#D55E00"}
METHOD_NAMES = {"lora": "LoRA", "coto": "CoTo"}
METHOD_ORDER = ("lora", "coto")
# labels that are not methods (other checkpoints, seed pairs): never a method's colour
OTHER_COLORS = ("#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442", "#999999")
# LMC / merge spaces: delta solid with circles, factor dashed with squares
SPACE_STYLES = {"delta": {"ls": "-", "marker": "o"}, "factor": {"ls": "--", "marker": "s"}}
LAYER_AXIS = "layer"  # layers are numbered from 0, as in shapley.csv and strategy names


def method_of(label: str) -> str | None:
    """The method a label names (``"coto"``, ``"LoRA (n=2)"``, ``"coto s0-s1"`` -> its key)."""
    head = str(label).strip().split(" ")[0].split("-")[0].split("(")[0].lower()
    return head if head in METHOD_COLORS else None


def display_name(label: str) -> str:
    """``label`` with a leading method name spelled the one way (LoRA, CoTo)."""
    m = method_of(label)
    if m is None:
        return str(label)
    text = str(label).strip()
    return METHOD_NAMES[m] + text[len(m) :]


def color_for(label: str, index: int = 0) -> str:
    """The method's colour for a method label, else the ``index``-th of the other colours."""
    m = method_of(label)
    return METHOD_COLORS[m] if m is not None else OTHER_COLORS[index % len(OTHER_COLORS)]


def colors_for(labels: Sequence[str]) -> list[str]:
    """One colour per label: methods keep theirs, other labels take the other colours in turn."""
    out, k = [], 0
    for lab in labels:
        if method_of(lab) is not None:
            out.append(color_for(lab))
        else:
            out.append(OTHER_COLORS[k % len(OTHER_COLORS)])
            k += 1
    return out


def error_bars(sd: Iterable[float | None], counts: Sequence[int]) -> list[float] | None:
    """Error bars to draw for groups of ``counts`` values: ``None`` when no group has two
    values (k = 1: there is no spread to show); a missing or undefined sd draws no bar."""
    if not any(int(c) >= 2 for c in counts):
        return None
    return [0.0 if v is None or not math.isfinite(v) else float(v) for v in sd]


def bars_from_zero(ax: Any, values: Iterable[float] = ()) -> None:
    """A bar chart's value axis starts at 0 (negative values: the axis spans them too)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    lo = min([0.0, *v])
    hi = max([0.0, *v])
    top = ax.get_ylim()[1]
    ax.set_ylim(lo * 1.05 if lo < 0 else 0.0, max(top, hi * 1.05 if hi > 0 else 0.05))


def legend_outside(ax: Any, **kw: Any) -> Any:
    """A legend to the right of the axes, where it covers no bar or line."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    opts = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}
    opts.update({"fontsize": 8, "frameon": False}, **kw)
    return ax.legend(handles, labels, **opts)


def cell_format(values: Iterable[float]) -> str:
    """One format for every number of a heatmap (or a set of heatmaps on one colour scale):
    fixed decimals, enough for the largest magnitude to show 3 significant digits."""
    finite = [abs(float(v)) for v in values if v is not None and math.isfinite(float(v))]
    top = max(finite, default=0.0)
    if top == 0.0:
        return "{:.2f}"
    decimals = min(6, max(2, 2 - math.floor(math.log10(top))))
    return "{:." + str(decimals) + "f}"


def layer_ticks(layers: Sequence[int]) -> list[str]:
    """Tick labels of layer axes: the layer indices as they are (0-based)."""
    return [str(int(x)) for x in layers]
