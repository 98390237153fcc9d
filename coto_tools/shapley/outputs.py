"""Output files of a Shapley run (``shapley.csv``, ``shapley.json``, the two figures) and the
balance summary: how evenly the contribution is spread over layers and players.

Balance measures (computed on the primary metric's values):

* ``layer_cv``: coefficient of variation ``std / |mean|`` (population std) of the per-layer
  contributions, each the sum of the values of that layer's players (``None`` when a player spans
  several layers, e.g. kind or tower players, or fewer than 2 layers);
* ``gini_abs``: Gini coefficient of ``|values|`` (0: all equal; ``(n-1)/n``: one player has all);
* ``top3_share``: the 3 largest ``|values|`` as a share of ``sum |values|``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from coto_tools.adapters.atomic import atomic_write_text
from coto_tools.adapters.keys import parse_module_name
from coto_tools.adapters.players import Players
from coto_tools.jsonio import dumps_strict
from coto_tools.shapley.plots import (
    ALL,
    heatmap_grid,
    player_cell,
    plot_convergence,
    plot_heatmap,
    plot_heatmaps,
    save_figure,
)
from coto_tools.shapley.result import ShapleyResult

CSV_FILE = "shapley.csv"
JSON_FILE = "shapley.json"
HEATMAP_FILE = "shapley_heatmap.png"
CONVERGENCE_FILE = "shapley_convergence.png"
JSON_FORMAT = "coto-tools/shapley"


def layer_contributions(players: Players, values: np.ndarray) -> dict[int, float] | None:
    """``{layer: sum of that layer's player values}``; ``None`` if a player spans layers.
    Players with no layer at all (the ``other`` group, e.g. a pooler) are left out."""
    out: dict[int, float] = {}
    for members, v in zip(players.members, values, strict=True):
        if all(parse_module_name(m).layer is None for m in members):
            continue
        layer = player_cell(members)[2]
        if layer == ALL:
            return None
        out[int(layer)] = out.get(int(layer), 0.0) + float(v)
    return dict(sorted(out.items()))


def coefficient_of_variation(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2 or x.mean() == 0:
        return None
    return float(x.std() / abs(x.mean()))


def gini(x: np.ndarray) -> float | None:
    """Gini coefficient of non-negative ``x``: ``sum_ij |x_i - x_j| / (2 n^2 mean)``."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or x.sum() <= 0:
        return None
    diffs = np.abs(x[:, None] - x[None, :]).sum()
    return float(diffs / (2 * x.size**2 * x.mean()))


def top_share(x: np.ndarray, k: int = 3) -> float | None:
    a = np.sort(np.abs(np.asarray(x, dtype=np.float64)))[::-1]
    return None if a.sum() <= 0 else float(a[:k].sum() / a.sum())


def balance_summary(players: Players, values: np.ndarray) -> dict[str, Any]:
    layers = layer_contributions(players, values)
    return {
        "layer_contributions": None if layers is None else {str(k): v for k, v in layers.items()},
        "layer_cv": None
        if layers is None
        else coefficient_of_variation(np.array(list(layers.values()))),
        "gini_abs": gini(np.abs(values)),
        "top3_share": top_share(values, 3),
        "note": "layer_cv: std/|mean| of per-layer sums; gini_abs: Gini of |values|; "
        "top3_share: 3 largest |values| / sum |values|",
    }


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def metric_summary(r: ShapleyResult) -> dict[str, Any]:
    return {
        "estimator": r.estimator,
        "seed": r.seed,
        "evaluations": r.evaluations,
        "n_samples": r.n_samples,
        "stopped_by": r.stopped_by,
        "v_full": r.v_full,
        "v_empty": r.v_empty,
        "efficiency_gap": r.efficiency_gap(),
        "rank_stability": _clean(r.rank_stability()),
        "max_std_error": _clean(float(np.max(r.std_errors))) if r.n_players else None,
    }


def csv_text(players: Players, results: Mapping[str, ShapleyResult], primary: str) -> str:
    """One row per player: player, tower, layer, kind, the primary metric's value, stderr,
    ci_low, ci_high, then ``value_<m>``, ``stderr_<m>``, ``ci_low_<m>``, ``ci_high_<m>`` per
    metric. Group players leave tower/layer/kind empty where their members differ."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["player", "tower", "layer", "kind", "value", "stderr", "ci_low", "ci_high"]
    for m in results:
        head += [f"value_{m}", f"stderr_{m}", f"ci_low_{m}", f"ci_high_{m}"]
    w.writerow(head)
    p = results[primary]
    for i, (name, members) in enumerate(zip(players.names, players.members, strict=True)):
        tower, kind, layer = player_cell(members)
        row: list[Any] = [name] + ["" if x == ALL else x for x in (tower, layer, kind)]
        row += [repr(float(a[i])) for a in (p.values, p.std_errors, p.ci_low, p.ci_high)]
        for r in results.values():
            row += [repr(float(a[i])) for a in (r.values, r.std_errors, r.ci_low, r.ci_high)]
        w.writerow(row)
    return buf.getvalue()


def write_outputs(
    out: Path,
    players: Players,
    results: Mapping[str, ShapleyResult],
    primary: str,
    run_info: Mapping[str, Any],
    *,
    figures: bool = True,
) -> dict[str, Path]:
    """Write the four output files of one run atomically (the two figures only with
    ``figures``); return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    p = results[primary]
    doc: dict[str, Any] = {"format": JSON_FORMAT, "version": 1, **run_info}
    doc |= {
        "estimator": p.estimator,
        "evaluations": p.evaluations,
        "v_full": p.v_full,
        "v_empty": p.v_empty,
        "efficiency_gap": p.efficiency_gap(),
        "rank_stability": _clean(p.rank_stability()),
        "rank_stability_note": "Spearman between estimates from two disjoint halves of the "
        "samples (null for exact, which has no sampling error)",
        "players": [
            {"name": n, "members": list(m)}
            for n, m in zip(players.names, players.members, strict=True)
        ],
        "balance": balance_summary(players, p.values),
        "metrics": {
            m: metric_summary(r)
            | {"values": r.values.tolist(), "std_errors": r.std_errors.tolist()}
            for m, r in results.items()
        },  # fmt: skip
    }
    files = {
        "csv": atomic_write_text(out / CSV_FILE, csv_text(players, results, primary)),
        "json": atomic_write_text(out / JSON_FILE, dumps_strict(doc, indent=2) + "\n"),
    }
    if not figures:
        return files
    fig = plot_heatmap(
        heatmap_grid(players, p.values),
        title=f"{Path(str(run_info.get('checkpoint', ''))).name}: {primary} "
        f"({p.estimator}, {p.evaluations} evals)",
        label=f"Shapley value ({primary})",
    )
    files["heatmap"] = save_figure(fig, out / HEATMAP_FILE)
    files["convergence"] = save_figure(plot_convergence(p), out / CONVERGENCE_FILE)
    return files


COMPARE_HEATMAP_FILE = "shapley_heatmaps.png"
COMPARE_CSV_FILE = "shapley_compare.csv"


class ComparedRun(Protocol):
    """What :func:`write_comparison` reads of a run (a
    :class:`~coto_tools.shapley.run.ShapleyRunResult` has it; this module does not import the
    run module, which imports this one)."""

    @property
    def checkpoint(self) -> Path: ...
    @property
    def players(self) -> Players: ...
    @property
    def summary(self) -> dict[str, Any]: ...
    @property
    def primary(self) -> ShapleyResult: ...


def write_comparison(out: Path, runs: Sequence[ComparedRun]) -> dict[str, Path]:
    """Several runs side by side: ``shapley_heatmaps.png`` (one colour scale) and
    ``shapley_compare.csv`` (checkpoint, player, value, stderr of the primary metric)."""
    panels = []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["checkpoint", "player", "value", "stderr", "ci_low", "ci_high"])
    for r in runs:
        p = r.primary
        panels.append((_label(r), heatmap_grid(r.players, p.values)))
        for i, name in enumerate(r.players.names):
            w.writerow([str(r.checkpoint), name] + [repr(float(a[i])) for a in
                       (p.values, p.std_errors, p.ci_low, p.ci_high)])  # fmt: skip
    metric = runs[0].primary.metric
    files = {"csv": atomic_write_text(out / COMPARE_CSV_FILE, buf.getvalue())}
    fig = plot_heatmaps(panels, label=f"Shapley value ({metric})")
    files["heatmap"] = save_figure(fig, out / COMPARE_HEATMAP_FILE)
    return files


def _label(r: ComparedRun) -> str:
    ck = r.checkpoint.resolve()
    return f"{ck.name} ({r.summary['task']}, {r.primary.estimator})"
