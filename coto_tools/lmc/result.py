"""What an LMC run returns: curves along paths and a grid over a plane, with their summaries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

import numpy as np

from coto_tools.errors import OptionError
from coto_tools.lmc.barrier import Barrier, Curve, barrier, barriers
from coto_tools.lmc.space import Space
from coto_tools.tasks.base import METRIC_NAMES, Metrics


class PathKind(str, Enum):
    """``pair``: adapter A (a = 0) to adapter B (a = 1); ``from_zero``: base model (scale 0)
    through the adapter (scale 1) and beyond."""

    pair = "pair"
    from_zero = "from_zero"


def _finite(x: float | None) -> float | None:
    """JSON has no NaN/inf: they are written as null."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _metrics_json(m: Metrics) -> dict[str, Any]:
    return {
        "accuracy": _finite(m.accuracy),
        "loss": _finite(m.loss),
        "logprob": _finite(m.logprob),
        "n": m.n,
    }


@dataclass(frozen=True)
class LmcResult:
    """Metrics along one path, in one or both spaces.

    ``names`` are the endpoints' names (``("base", name)`` for a ``from_zero`` path);
    ``one_sided`` maps each module held by only one endpoint to that endpoint's name (the other
    side counts it as zero).
    """

    label: str
    names: tuple[str, str]
    kind: PathKind
    curves: Mapping[Space, Curve]
    one_sided: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.curves:
            raise OptionError("an LMC result needs at least one curve")
        object.__setattr__(self, "curves", MappingProxyType(dict(self.curves)))
        object.__setattr__(self, "one_sided", MappingProxyType(dict(self.one_sided)))

    def barriers(self) -> dict[Space, dict[str, Barrier]]:
        return {space: barriers(curve) for space, curve in self.curves.items()}

    def endpoints(self) -> dict[str, Metrics]:
        """Metrics at ``a = 0`` and ``a = 1`` (from the first curve: every space agrees there)."""
        curve = next(iter(self.curves.values()))
        return {self.names[0]: curve.at(0.0), self.names[1]: curve.at(1.0)}

    def summary(self) -> dict[str, Any]:
        ends = self.endpoints()
        out: dict[str, Any] = {
            "label": self.label,
            "kind": self.kind.value,
            "a0": self.names[0],
            "a1": self.names[1],
            "endpoints": {name: _metrics_json(m) for name, m in ends.items()},
            "one_sided_modules": dict(self.one_sided),
            "spaces": {},
        }
        for space, bars in self.barriers().items():
            curve = self.curves[space]
            entry: dict[str, Any] = {
                metric: {
                    k: _finite(v) if isinstance(v, float) else v for k, v in b.as_dict().items()
                }
                for metric, b in bars.items()
            }
            entry["midpoint"] = _metrics_json(curve.at(0.5))
            if self.kind is PathKind.from_zero:
                entry["max_scale"] = curve.a[-1]
                entry["at_max_scale"] = _metrics_json(curve.metrics[-1])
            out["spaces"][space.value] = entry
        return out

    def rows(self, pair: int) -> list[dict[str, Any]]:
        """CSV rows: pair, label, kind, space, a, every metric."""
        rows = []
        for space, curve in self.curves.items():
            for a, m in zip(curve.a, curve.metrics, strict=True):
                rows.append(
                    {
                        "pair": pair,
                        "label": self.label,
                        "kind": self.kind.value,
                        "space": space.value,
                        "a": a,
                    }
                    | m.as_dict()
                )
        return rows


@dataclass(frozen=True)
class PlaneResult:
    """Metrics over the plane ``ΔW = ΔW_0 + u·(ΔW_1 - ΔW_0) + v·(ΔW_2 - ΔW_0)`` (delta space).

    ``gram`` is the ``3 x 3`` Gram matrix ``<ΔW_i, ΔW_j>_F`` summed over modules, used to draw
    the plane with its true geometry.
    """

    names: tuple[str, str, str]
    weights: tuple[tuple[float, float, float], ...]
    metrics: tuple[Metrics, ...]
    grid: int
    margin: float
    gram: np.ndarray
    one_sided: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def points(self) -> tuple[tuple[float, float], ...]:
        """``(u, v)`` per point."""
        return tuple((w[1], w[2]) for w in self.weights)

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.metrics):
            raise OptionError("plane: one metrics entry per point is needed")
        object.__setattr__(self, "one_sided", MappingProxyType(dict(self.one_sided)))

    def at(self, u: float, v: float) -> Metrics:
        for p, m in zip(self.points, self.metrics, strict=True):
            if p == (u, v):
                return m
        raise KeyError((u, v))

    def corners(self) -> dict[str, Metrics]:
        return {
            self.names[0]: self.at(0.0, 0.0),
            self.names[1]: self.at(1.0, 0.0),
            self.names[2]: self.at(0.0, 1.0),
        }

    def values(self, metric: str) -> np.ndarray:
        return np.array([m.get(metric) for m in self.metrics], dtype=np.float64)

    def xy(self) -> np.ndarray:
        """Plane coordinates (Garipov et al. 2018, arXiv 1802.10026, Fig. 1): corner 0 at the
        origin, corner 1 on the x axis at ``||ΔW_1 - ΔW_0||``, corner 2 at its true distance and
        angle. Falls back to ``(u, v)`` when the three deltas are (nearly) collinear."""
        g = self.gram
        d11 = g[1, 1] - 2 * g[0, 1] + g[0, 0]  # ||B - A||²
        d22 = g[2, 2] - 2 * g[0, 2] + g[0, 0]  # ||C - A||²
        d12 = g[1, 2] - g[0, 1] - g[0, 2] + g[0, 0]  # <B - A, C - A>
        uv = np.asarray(self.points, dtype=np.float64)
        if d11 <= 0 or d22 <= 0:
            return uv
        e = math.sqrt(d11)
        cx = d12 / e
        cy2 = d22 - cx * cx
        if cy2 <= 1e-12 * d22:
            return uv
        cy = math.sqrt(cy2)
        return np.stack([uv[:, 0] * e + uv[:, 1] * cx, uv[:, 1] * cy], axis=1)

    def edge_barriers(self) -> dict[str, dict[str, Barrier]]:
        """Barriers along the triangle's three edges, read off the grid points on them."""
        w = np.asarray(self.weights, dtype=np.float64)
        w0, u, v = w[:, 0], w[:, 1], w[:, 2]
        n0, n1, n2 = self.names
        edges = {
            f"{n0}->{n1}": ((v == 0.0), u),
            f"{n0}->{n2}": ((u == 0.0), v),
            f"{n1}->{n2}": ((w0 == 0.0), v),
        }
        out: dict[str, dict[str, Barrier]] = {}
        for name, (mask, pos) in edges.items():
            idx = np.flatnonzero(mask)
            idx = idx[np.argsort(pos[idx])]
            a = pos[idx]
            out[name] = {
                metric: barrier(
                    a,
                    np.array([self.metrics[i].get(metric) for i in idx]),
                    higher_is_better=metric != "loss",
                    metric=metric,
                )
                for metric in ("loss", "accuracy")
            }
        return out

    def summary(self) -> dict[str, Any]:
        best = {}
        for metric in ("loss", "accuracy"):
            vals = self.values(metric)
            k = int(np.nanargmin(vals) if metric == "loss" else np.nanargmax(vals))
            best[metric] = {
                "u": self.points[k][0],
                "v": self.points[k][1],
                "value": _finite(vals[k]),
            }
        return {
            "names": list(self.names),
            "grid": self.grid,
            "margin": self.margin,
            "n_points": len(self.points),
            "corners": {n: _metrics_json(m) for n, m in self.corners().items()},
            "best": best,
            "edges": {
                e: {
                    m: {
                        k: _finite(x) if isinstance(x, float) else x for k, x in b.as_dict().items()
                    }
                    for m, b in bs.items()
                }
                for e, bs in self.edge_barriers().items()
            },
            "one_sided_modules": {k: list(v) for k, v in self.one_sided.items()},
        }

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for (w0, u, v), m in zip(self.weights, self.metrics, strict=True):
            out.append({"u": u, "v": v, "w0": w0, "w1": u, "w2": v} | m.as_dict())
        return out


CSV_METRICS = (*METRIC_NAMES, "n")
