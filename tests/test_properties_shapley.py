"""Property-based tests (hypothesis) of the Shapley axioms on random games.

Random games are tables of ``2^n`` values (:class:`TableGame`). Exact values must satisfy
efficiency, symmetry, the dummy axiom and additivity, and agree with the definition as an
average over all ``n!`` orderings (computed here, independently of the library). The sampling
estimators permutation, antithetic, kernelshap and stratified must be efficient for every sample
size.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coto_tools.shapley import SumGame, TableGame, estimate_shapley

SETTINGS = settings(
    max_examples=30, deadline=3000, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
VALUE = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)


@st.composite
def tables(draw, *, n_min: int = 1, n_max: int = 6) -> np.ndarray:  # type: ignore[no-untyped-def]
    n = draw(st.integers(n_min, n_max))
    return np.array(draw(st.lists(VALUE, min_size=1 << n, max_size=1 << n)))


def n_of(table: np.ndarray) -> int:
    return int(round(math.log2(table.size)))


def exact(table: np.ndarray) -> np.ndarray:
    return estimate_shapley(TableGame(table), n_of(table), estimator="exact").values


def by_orderings(table: np.ndarray) -> np.ndarray:
    """The definition: the mean over all orderings of each player's marginal contribution."""
    n = n_of(table)
    phi = np.zeros(n)
    for order in itertools.permutations(range(n)):
        mask = 0
        for i in order:
            phi[i] += table[mask | (1 << i)] - table[mask]
            mask |= 1 << i
    return phi / math.factorial(n)


def tol(table: np.ndarray) -> float:
    return 1e-9 * max(1.0, float(np.abs(table).max())) * table.size


@SETTINGS
@given(table=tables(n_max=5))
def test_exact_matches_the_definition_and_is_efficient(table: np.ndarray) -> None:
    phi = exact(table)
    np.testing.assert_allclose(phi, by_orderings(table), rtol=0, atol=tol(table))
    assert abs(phi.sum() - (table[-1] - table[0])) <= tol(table)


@SETTINGS
@given(data=st.data(), table=tables(n_min=2))
def test_exact_symmetry(data: st.DataObject, table: np.ndarray) -> None:
    """Make players i and j interchangeable (v(S) = v(S with i, j swapped)): phi_i = phi_j."""
    n = n_of(table)
    i, j = data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    masks = np.arange(table.size)
    bi, bj = (masks >> i) & 1, (masks >> j) & 1
    swapped = masks & ~((1 << i) | (1 << j)) | (bi << j) | (bj << i)
    sym = (table + table[swapped]) / 2
    phi = exact(sym)
    assert abs(phi[i] - phi[j]) <= tol(sym)


@SETTINGS
@given(data=st.data(), table=tables(n_max=5), c=VALUE)
def test_exact_dummy(data: st.DataObject, table: np.ndarray, c: float) -> None:
    """Insert a player d that adds exactly c to every coalition: phi_d = c, others unchanged
    (c = 0: a null player gets 0)."""
    n = n_of(table)
    d = data.draw(st.integers(0, n))
    masks = np.arange(1 << (n + 1))
    low, high = masks & ((1 << d) - 1), masks >> (d + 1)
    has_d = (masks >> d) & 1
    bigger = table[low | (high << d)] + c * has_d
    phi = exact(bigger)
    assert abs(phi[d] - c) <= tol(bigger)
    np.testing.assert_allclose(np.delete(phi, d), exact(table), rtol=0, atol=tol(bigger))


@SETTINGS
@given(data=st.data(), n=st.integers(1, 6))
def test_exact_additivity(data: st.DataObject, n: int) -> None:
    size = 1 << n
    t1 = np.array(data.draw(st.lists(VALUE, min_size=size, max_size=size)))
    t2 = np.array(data.draw(st.lists(VALUE, min_size=size, max_size=size)))
    both = estimate_shapley(SumGame(TableGame(t1), TableGame(t2)), n, estimator="exact").values
    np.testing.assert_allclose(both, exact(t1) + exact(t2), rtol=0, atol=tol(t1 + t2))


@SETTINGS
@given(
    table=tables(n_min=2, n_max=8),
    estimator=st.sampled_from(["permutation", "antithetic", "kernelshap", "stratified"]),
    budget=st.integers(20, 120),
    seed=st.integers(0, 10_000),
)
def test_sampling_estimates_are_efficient(
    table: np.ndarray, estimator: str, budget: int, seed: int
) -> None:
    n = n_of(table)
    res = estimate_shapley(TableGame(table), n, estimator=estimator, budget=budget, seed=seed)
    assert res.evaluations <= budget
    assert res.v_full == table[-1] and res.v_empty == table[0]
    assert abs(res.values.sum() - (table[-1] - table[0])) <= 1e-7 * max(1.0, np.abs(table).max())
