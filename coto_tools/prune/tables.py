"""Rows of ``prune.csv``, ``prune_curves.csv`` and ``prune_auc.csv``, and per-label summaries.

Definitions used throughout (``v`` is a metric, ``all`` = every adapter on, ``none`` = all off):

- ``retained = v(strategy) / v(all)``: the fraction of the unpruned metric kept (meaningful for
  accuracy; for loss and log-prob read ``gain_retained``).
- ``gain_retained = (v(strategy) - v(none)) / (v(all) - v(none))``: the fraction of what the
  adapters add over the base model that the strategy keeps (``nan`` when ``v(all) = v(none)``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coto_tools.prune.run import CheckpointResult, PruneResult
from coto_tools.tasks.base import METRIC_NAMES, Metrics

PRUNE_FIELDS = (
    "checkpoint", "label", "task", "strategy", "seed", "adapters_kept", "adapters_total",
    "fraction_kept", "accuracy", "loss", "logprob", "n", "retained", "gain_retained",
)  # fmt: skip
CURVE_FIELDS = (
    "checkpoint", "label", "curve", "seed", "x_name", "x", "adapters_removed", "players_total",
    "accuracy", "loss", "logprob", "n",
)  # fmt: skip
AUC_FIELDS = ("checkpoint", "label", "curve", "seed", "metric", "auc", "auc_norm", "auc_rel")


def retained(v: float, full: float) -> float:
    return float("nan") if full == 0.0 else v / full


def gain_retained(v: float, full: float, empty: float) -> float:
    return float("nan") if full == empty else (v - empty) / (full - empty)


def _fmt(x: Any) -> Any:
    if isinstance(x, float):
        return "" if math.isnan(x) else repr(x)
    return "" if x is None else x


def to_csv(rows: Iterable[dict[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in fields})
    return buf.getvalue()


def _metrics(m: Metrics) -> dict[str, Any]:
    return {"accuracy": m.accuracy, "loss": m.loss, "logprob": m.logprob, "n": m.n}


def strategy_rows(result: PruneResult) -> list[dict[str, Any]]:
    """One row per (checkpoint, strategy); a ``none`` row (no adapter) per checkpoint first."""
    metric = result.metric
    rows = []
    for c in result.checkpoints:
        total = len(c.modules)
        full, empty = c.full.get(metric), c.empty.get(metric)
        entries = [("none", None, 0, c.empty)] + [
            (s.strategy.name, s.strategy.seed, len(s.kept), s.metrics) for s in c.strategies
        ]
        for name, seed, kept, m in entries:
            v = m.get(metric)
            rows.append(
                {
                    "checkpoint": c.path, "label": c.label, "task": c.task, "strategy": name,
                    "seed": seed, "adapters_kept": kept, "adapters_total": total,
                    "fraction_kept": kept / total, **_metrics(m),
                    "retained": retained(v, full), "gain_retained": gain_retained(v, full, empty),
                }
            )  # fmt: skip
    return rows


def curve_rows(result: PruneResult) -> list[dict[str, Any]]:
    rows = []
    for c in result.checkpoints:
        for cv in c.curves:
            for k, x, m in zip(cv.removed, cv.fractions, cv.metrics, strict=True):
                rows.append(
                    {
                        "checkpoint": c.path, "label": c.label, "curve": cv.name,
                        "seed": cv.seed, "x_name": "fraction_removed", "x": float(x),
                        "adapters_removed": k, "players_total": cv.n_players, **_metrics(m),
                    }
                )  # fmt: skip
        if c.rank is not None:
            for r, m in zip(c.rank.ranks, c.rank.metrics, strict=True):
                rows.append(
                    {
                        "checkpoint": c.path, "label": c.label, "curve": "rank", "x_name": "rank",
                        "x": r, "adapters_removed": 0, "players_total": len(c.modules),
                        **_metrics(m),
                    }
                )  # fmt: skip
    return rows


def auc_rows(result: PruneResult) -> list[dict[str, Any]]:
    rows = []
    for c in result.checkpoints:
        for cv in c.curves:
            for metric in METRIC_NAMES:
                rows.append(
                    {
                        "checkpoint": c.path, "label": c.label, "curve": cv.name,
                        "seed": cv.seed, "metric": metric, "auc": cv.auc(metric),
                        "auc_norm": cv.auc_norm(metric), "auc_rel": cv.auc_rel(metric),
                    }
                )  # fmt: skip
    return rows


def curve_family(name: str) -> str:
    """``random/seed3`` -> ``random``; other curve names unchanged."""
    return name.split("/", 1)[0]


# -- per-checkpoint and per-label values -----------------------------------------------------
def strategy_values(c: CheckpointResult, metric: str) -> dict[str, list[float]]:
    """Strategy name -> values (several for ``random:<f>``, one per seed)."""
    out: dict[str, list[float]] = {}
    for s in c.strategies:
        out.setdefault(s.strategy.name, []).append(s.metrics.get(metric))
    return out


def auc_values(c: CheckpointResult, metric: str) -> dict[str, list[float]]:
    """Curve family -> normalised AUCs (several for ``random``, one per seed)."""
    out: dict[str, list[float]] = {}
    for cv in c.curves:
        out.setdefault(curve_family(cv.name), []).append(cv.auc_norm(metric))
    return out


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of one quantity over the checkpoints of a label."""

    mean: float
    sd: float  # nan with one checkpoint
    k: int


def summarise(values: Sequence[float]) -> Summary:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    sd = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return Summary(float(arr.mean()), sd, int(arr.size))


def by_label(result: PruneResult, *, quantity: str, metric: str) -> dict[str, dict[str, Summary]]:
    """label -> item (strategy or curve family) -> Summary over that label's checkpoints.
    ``quantity``: ``value`` (strategy metric), ``retained`` or ``auc_norm``. A checkpoint's
    several values (random seeds) are averaged first."""
    acc: dict[str, dict[str, list[float]]] = {}
    for c in result.checkpoints:
        if quantity == "auc_norm":
            items = auc_values(c, metric)
        else:
            items = strategy_values(c, metric)
            if quantity == "retained":
                full = c.full.get(metric)
                items = {k: [retained(v, full) for v in vs] for k, vs in items.items()}
        for item, vs in items.items():
            acc.setdefault(c.label, {}).setdefault(item, []).append(float(np.mean(vs)))
    return {lab: {it: summarise(vs) for it, vs in d.items()} for lab, d in acc.items()}
