"""Fraction sweeps on an additive fake evaluator, AUC of known curves, SVD rank truncation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.errors import OptionError
from coto_tools.prune.rank import rank_grid, rank_sweep, rank_truncation, truncate_module
from coto_tools.prune.sweeps import (
    SweepOrder,
    auc,
    fraction_sweep,
    normalised_auc,
    relative_auc,
    removal_order,
)
from coto_tools.tasks.base import Metrics


class AdditiveEvaluator:
    """``accuracy = base + Σ gate_m · w_m``; counts evaluations and caches like the real one."""

    def __init__(self, weights: Mapping[str, float], base: float = 0.0) -> None:
        self.weights = dict(weights)
        self.base = base
        self.calls = 0
        self._cache: dict[tuple[tuple[str, float], ...], Metrics] = {}

    def value(self, gates: Mapping[str, float]) -> Metrics:
        key = tuple(sorted(gates.items()))
        if key not in self._cache:
            self.calls += 1
            v = self.base + sum(g * self.weights[m] for m, g in gates.items())
            self._cache[key] = Metrics(accuracy=v, loss=-v, logprob=v, n=100)
        return self._cache[key]


NAMES = [f"encoder.layer.{i}.attention.self.{k}" for i in range(2) for k in ("query", "value")]


def test_auc_of_known_curves() -> None:
    x = np.linspace(0, 1, 11)
    assert auc(x, 0.9 - 0.4 * x) == pytest.approx(0.7, abs=1e-12)  # 0.9 - 0.4/2
    assert normalised_auc(x, 0.9 - 0.4 * x) == pytest.approx(0.5, abs=1e-12)
    assert relative_auc(x, 0.9 - 0.4 * x) == pytest.approx(0.7 / 0.9, abs=1e-12)
    # a step that holds 1 until x = 0.5, then a straight fall to 0 at 1: area 0.75
    xs, ys = [0.0, 0.5, 1.0], [1.0, 1.0, 0.0]
    assert auc(xs, ys) == pytest.approx(0.75) and normalised_auc(xs, ys) == pytest.approx(0.75)
    # losses rise as adapters go: the normalisation still gives 0.5 for a straight line
    assert normalised_auc(x, 0.2 + x) == pytest.approx(0.5)
    assert np.isnan(normalised_auc(x, np.ones_like(x)))
    with pytest.raises(OptionError):
        auc([0.0, 1.0, 0.5], [1.0, 1.0, 1.0])


def test_fraction_sweep_follows_the_ordering() -> None:
    w = {n: float(i + 1) for i, n in enumerate(NAMES)}  # 1, 2, 3, 4
    ev = AdditiveEvaluator(w)
    order = removal_order(NAMES, SweepOrder.shapley_asc, shapley=w)
    assert [o[0] for o in order] == NAMES
    curve = fraction_sweep(ev, order, steps=4)
    assert curve.removed == (0, 1, 2, 3, 4)
    assert list(curve.values("accuracy")) == [10.0, 9.0, 7.0, 4.0, 0.0]
    # trapezoid area by hand: 0.25 * (10+9 + 9+7 + 7+4 + 4+0) / 2 = 6.25
    assert curve.auc("accuracy") == pytest.approx(6.25)
    assert curve.auc_norm("accuracy") == pytest.approx(0.625)
    desc = fraction_sweep(ev, removal_order(NAMES, "shapley-desc", shapley=w), steps=4)
    assert list(desc.values("accuracy")) == [10.0, 6.0, 3.0, 1.0, 0.0]
    assert desc.auc_norm("accuracy") < curve.auc_norm("accuracy")
    assert ev.calls == 8  # the full and empty configurations are cached across the two sweeps


def test_fraction_sweep_grid_with_more_steps_than_players() -> None:
    ev = AdditiveEvaluator(dict.fromkeys(NAMES, 1.0))
    curve = fraction_sweep(ev, NAMES, steps=10)
    assert curve.removed == (0, 1, 2, 3, 4)  # repeated counts evaluated once
    assert curve.auc_norm("accuracy") == pytest.approx(0.5)  # equal weights: a straight line
    assert ev.calls == 5


def test_grouped_ordering_and_random_order_is_seeded() -> None:
    ev = AdditiveEvaluator(dict.fromkeys(NAMES, 1.0))
    curve = fraction_sweep(ev, [NAMES[:2], NAMES[2:]], steps=2)
    assert curve.n_players == 2 and list(curve.values("accuracy")) == [4.0, 2.0, 0.0]
    a = removal_order(NAMES, "random", seed=5)
    assert a == removal_order(NAMES, "random", seed=5)
    assert sorted(m for g in a for m in g) == sorted(NAMES)
    norms = {n: float(-i) for i, n in enumerate(NAMES)}
    assert [g[0] for g in removal_order(NAMES, "norm-asc", norms=norms)] == NAMES[::-1]
    with pytest.raises(OptionError, match="twice"):
        fraction_sweep(ev, [NAMES[0], NAMES[0]], steps=2)


def _module(
    rank: int, seed: int, *, rslora: bool = False, out: int = 12, inp: int = 20
) -> LoraModule:
    g = torch.Generator().manual_seed(seed)
    return LoraModule(
        A=torch.randn(rank, inp, generator=g),
        B=torch.randn(out, rank, generator=g),
        alpha=16.0,
        use_rslora=rslora,
    )


@pytest.mark.parametrize("rslora", [False, True])
def test_truncation_to_full_rank_is_identity(rslora: bool) -> None:
    m = _module(8, 0, rslora=rslora)
    t = truncate_module(m, 8)
    assert t.rank == 8
    torch.testing.assert_close(t.delta(), m.delta(), atol=1e-5, rtol=1e-5)
    assert truncate_module(m, 100).rank == 8  # capped at the module's rank


@pytest.mark.parametrize(("rank", "keep", "rslora"), [(8, 1, False), (8, 3, True), (4, 2, False)])
def test_truncation_is_the_best_low_rank_approximation(rank: int, keep: int, rslora: bool) -> None:
    m = _module(rank, 1, rslora=rslora)
    d = m.delta(torch.float64)
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    best = (u[:, :keep] * s[:keep]) @ vh[:keep]  # Eckart-Young
    t = truncate_module(m, keep)
    assert t.rank == keep and t.alpha == m.alpha and t.use_rslora == rslora
    torch.testing.assert_close(t.delta(torch.float64), best, atol=1e-5, rtol=1e-5)
    err = torch.linalg.matrix_norm(t.delta(torch.float64) - d)
    assert float(err) == pytest.approx(float(s[keep:].square().sum().sqrt()), rel=1e-5)


def test_rank_truncation_of_adapter_and_grid() -> None:
    ad = LoraAdapter({"a": _module(8, 2), "b": _module(4, 3, out=5, inp=7)})
    t = rank_truncation(ad, 2)
    assert t["a"].rank == 2 and t["b"].rank == 2
    only = rank_truncation(ad, 1, modules=["a"])
    assert only["a"].rank == 1 and only["b"] is ad["b"]
    assert rank_grid(8) == [8, 4, 2, 1]
    assert rank_grid(6) == [6, 3, 1]
    assert rank_grid(8, [16, 2, 2]) == [8, 2]
    with pytest.raises(OptionError):
        rank_grid(8, [0])
    seen = []
    curve = rank_sweep(lambda a: seen.append(a["a"].rank) or Metrics(1.0, 0.0, 0.0, 1), ad)
    assert curve.ranks == (8, 4, 2, 1) and seen == [8, 4, 2, 1]
