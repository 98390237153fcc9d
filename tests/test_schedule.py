"""CoTo's activation schedule, its gate draws, and the learning-rate plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coto_tools.errors import OptionError
from coto_tools.train.lr import LrPlan
from coto_tools.train.schedule import CoToSchedule, Shape, _conditional_draw, sample_active

# T = 80, stage1_ratio = 0.75 -> stage 1 ends at step 60; step 30 is half way (u = 0.5),
# step 15 a quarter (u = 0.25). Expected values from the closed forms in the docstring.
HALF = 30
QUARTER = 15


@pytest.mark.parametrize(
    ("shape", "at_quarter", "at_half"),
    [
        (Shape.linear, 0.1 + 0.9 * 0.25, 0.1 + 0.9 * 0.5),
        (Shape.exponential, 0.1**0.75, 0.1**0.5),
        (Shape.sine, 0.1 + 0.9 * math.sin(math.pi / 8), 0.1 + 0.9 * math.sin(math.pi / 4)),
    ],
)
def test_schedule_values_at_known_steps(shape: Shape, at_quarter: float, at_half: float) -> None:
    s = CoToSchedule(80, p_start=0.1, stage1_ratio=0.75, shape=shape)
    assert s.p(0) == pytest.approx(0.1, abs=1e-12)
    assert s.p(QUARTER) == pytest.approx(at_quarter, abs=1e-12)
    assert s.p(HALF) == pytest.approx(at_half, abs=1e-12)
    assert s.p(59) < 1.0
    assert s.p(60) == 1.0 and s.p(79) == 1.0
    ps = [s.p(t) for t in range(80)]
    assert all(b >= a for a, b in zip(ps, ps[1:], strict=False))


def test_shapes_differ_as_documented() -> None:
    lin, exp_, sin_ = (CoToSchedule(80, shape=sh) for sh in Shape)
    # exponential is below linear, sine above, strictly inside stage 1
    for t in range(1, 60):
        assert exp_.p(t) < lin.p(t) < sin_.p(t)


def test_schedule_defaults_and_edge_ratios() -> None:
    s = CoToSchedule(100)
    assert (s.p_start, s.stage1_ratio, s.shape) == (0.1, 0.75, Shape.linear)
    assert s.p(74) == pytest.approx(0.1 + 0.9 * 74 / 75)
    assert s.p(75) == 1.0
    assert all(CoToSchedule(10, stage1_ratio=0.0).p(t) == 1.0 for t in range(10))
    full = CoToSchedule(10, stage1_ratio=1.0)
    assert full.p(9) == pytest.approx(0.1 + 0.9 * 0.9)
    assert CoToSchedule(10, shape="sine").shape is Shape.sine


@pytest.mark.parametrize(
    "kwargs",
    [
        {"p_start": -0.1},
        {"p_start": 1.5},
        {"stage1_ratio": 1.2},
        {"shape": "cubic"},
        {"shape": "exponential", "p_start": 0.0},
        {"total_steps": 0},
    ],
)
def test_schedule_rejects_bad_options(kwargs: dict) -> None:
    args = {"total_steps": 10} | kwargs
    with pytest.raises(OptionError):
        CoToSchedule(**args)


@settings(max_examples=200, deadline=None)
@given(
    p=st.floats(min_value=0.0, max_value=1.0),
    n=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_at_least_one_group_is_always_active(p: float, n: int, seed: int) -> None:
    mask = sample_active(p, n, np.random.default_rng(seed))
    assert mask.dtype == bool and mask.shape == (n,)
    assert mask.any()
    if p == 1.0:
        assert mask.all()


def test_p_zero_activates_exactly_one_uniformly() -> None:
    rng = np.random.default_rng(0)
    counts = np.zeros(5)
    for _ in range(5000):
        m = sample_active(0.0, 5, rng)
        assert m.sum() == 1
        counts += m
    # each group ~1000 times; binomial sd ~28
    assert np.all(np.abs(counts - 1000) < 150)


@pytest.mark.parametrize(("p", "n"), [(0.5, 4), (0.1, 6)])
def test_rejection_draws_match_conditional_bernoulli(p: float, n: int) -> None:
    """P(group on | at least one on) = p / (1 - (1-p)^n) for the reference's redraw rule."""
    rng = np.random.default_rng(1)
    draws = np.array([sample_active(p, n, rng) for _ in range(20000)])
    expected = p / (1 - (1 - p) ** n)
    sd = math.sqrt(expected * (1 - expected) / 20000)
    assert np.all(np.abs(draws.mean(axis=0) - expected) < 5 * sd)


def test_direct_conditional_draw_matches_the_redraw_distribution() -> None:
    p, n, k = 0.3, 5, 20000
    rng = np.random.default_rng(2)
    direct = np.array([_conditional_draw(p, n, rng) for _ in range(k)])
    assert direct.any(axis=1).all()
    expected = p / (1 - (1 - p) ** n)
    sd = math.sqrt(expected * (1 - expected) / k)
    assert np.all(np.abs(direct.mean(axis=0) - expected) < 5 * sd)
    # distribution of the number active: P(K=1 | K>=1) = n p (1-p)^(n-1) / (1 - (1-p)^n)
    p1 = n * p * (1 - p) ** (n - 1) / (1 - (1 - p) ** n)
    sd1 = math.sqrt(p1 * (1 - p1) / k)
    assert abs((direct.sum(axis=1) == 1).mean() - p1) < 5 * sd1


def test_seeded_draws_repeat() -> None:
    s = CoToSchedule(50)
    a = [s.sample(t, 6, np.random.default_rng(7)) for t in range(50)]
    b = [s.sample(t, 6, np.random.default_rng(7)) for t in range(50)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    seq1 = np.array([s.sample(t, 6, r1) for t in range(50)])
    seq2 = np.array([s.sample(t, 6, r2) for t in range(50)])
    assert np.array_equal(seq1, seq2)
    # the schedule shows in the draws: few groups on early, all on in stage 2
    assert seq1[:10].mean() < 0.6 and seq1[38:].all()


def test_lr_plan_warmup_constant_and_cosine_floor() -> None:
    const = LrPlan(1e-3, 100, warmup_steps=10)
    assert const(0) == pytest.approx(1e-4)
    assert const(9) == pytest.approx(1e-3)
    assert const(10) == const(99) == pytest.approx(1e-3)
    # v = (t - 1) / (T - 2): half way at t = 51, the floor at the last step t = 101
    cos = LrPlan(1e-3, 102, warmup_steps=1, schedule="cosine", floor=0.1)
    assert cos(1) == pytest.approx(1e-3)
    assert cos(51) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert cos(101) == pytest.approx(1e-4)
    with pytest.raises(OptionError):
        LrPlan(1e-3, 10, warmup_steps=11)
    with pytest.raises(OptionError):
        LrPlan(0.0, 10)
