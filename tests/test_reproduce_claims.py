"""The verdict rule of the claims table, on numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from coto_tools.reproduce.claims import FAILS, HOLDS, INCONCLUSIVE, Row, binomial_se


def test_clear_win_holds_and_its_mirror_does_not() -> None:
    # d = 0.1; s = 0.01 per method -> SE = 0.01/sqrt(3) each, SE_d = 0.01*sqrt(2/3) = 0.00816
    lo, co = (0.80, 0.81, 0.82), (0.90, 0.91, 0.92)
    j = Row("acc", lo, co).judge()
    assert j["d"] == pytest.approx(0.1)
    assert j["se_d"] == pytest.approx(0.01 * math.sqrt(2 / 3))
    assert j["verdict"] == HOLDS
    assert Row("acc", co, lo).judge()["verdict"] == FAILS


def test_lower_is_better_flips_the_sign() -> None:
    j = Row("barrier", (0.30, 0.31, 0.32), (0.10, 0.11, 0.12), higher_is_better=False).judge()
    assert j["d"] == pytest.approx(0.2) and j["verdict"] == HOLDS


def test_binomial_floor_can_make_a_difference_inconclusive() -> None:
    lo, co = (0.80, 0.81, 0.82), (0.90, 0.91, 0.92)
    floors = (binomial_se(0.81, 50), binomial_se(0.91, 50))
    # b = sqrt(.81*.19/50) = .05548, sqrt(.91*.09/50) = .04047; s^2/k = .0001/3 per method
    # SE_d^2 = 2 * .0000333 + .05548^2 + .04047^2 = .0047827 -> SE_d = .06916, 2 SE_d = .138
    assert floors[0] == pytest.approx(0.05548, abs=1e-5)
    j = Row("acc", lo, co, floor=floors).judge()
    assert j["se_d"] == pytest.approx(0.06916, abs=1e-4)
    assert j["verdict"] == INCONCLUSIVE
    # the same difference on 5,000 documents: b is small and the rule says holds
    big = (binomial_se(0.81, 5000), binomial_se(0.91, 5000))
    assert Row("acc", lo, co, floor=big).judge()["verdict"] == HOLDS


def test_one_value_per_method_is_always_inconclusive() -> None:
    j = Row("acc", (0.5,), (0.99,)).judge()
    assert j["verdict"] == INCONCLUSIVE and j["se_d"] is None and j["d"] == pytest.approx(0.49)


def test_identical_values_are_inconclusive_not_a_division_by_zero() -> None:
    assert Row("acc", (0.9, 0.9), (0.9, 0.9)).judge()["verdict"] == INCONCLUSIVE
