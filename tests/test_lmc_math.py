"""LMC pure parts: barrier math on hand-made curves, grids, factor interpolation, Gram matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.errors import OptionError
from coto_tools.lmc.barrier import Curve, barrier, barriers
from coto_tools.lmc.grid import from_zero_positions, path_positions, plane_positions
from coto_tools.lmc.space import (
    Space,
    check_compatible,
    delta_gram,
    effective_delta,
    interpolate_factors,
    one_sided,
)
from coto_tools.tasks.base import Metrics


# -- barriers -------------------------------------------------------------------------------
def test_loss_barrier_hand_made() -> None:
    a = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    loss = np.array([1.0, 2.0, 3.0, 2.0, 2.0])  # chord 1 + a = 1, 1.25, 1.5, 1.75, 2
    b = barrier(a, loss, higher_is_better=False)
    assert b.height == pytest.approx(1.5)
    assert b.at == 0.5
    assert b.midpoint == 3.0
    assert b.midpoint_barrier == pytest.approx(1.5)
    assert (b.start, b.end) == (1.0, 2.0)


def test_accuracy_barrier_sign_dip_is_positive() -> None:
    a = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    acc = np.array([0.9, 0.8, 0.5, 0.85, 0.7])  # chord 0.9, 0.85, 0.8, 0.75, 0.7
    b = barrier(a, acc, higher_is_better=True)
    assert b.height == pytest.approx(0.3)
    assert b.at == 0.5
    assert b.midpoint_barrier == pytest.approx(0.8 - 0.5)
    # a bump above the chord is no barrier: the endpoints' 0 is the max
    bump = barrier(a, np.array([0.5, 0.9, 0.95, 0.9, 0.5]), higher_is_better=True)
    assert bump.height == 0.0
    assert bump.midpoint_barrier == pytest.approx(-0.45)


def test_convex_loss_has_zero_barrier_and_points_outside_are_ignored() -> None:
    a = np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
    loss = np.array([100.0, 1.0, 0.5, 1.0, 100.0])
    b = barrier(a, loss, higher_is_better=False)
    assert b.height == 0.0
    assert b.at in (0.0, 1.0)
    assert b.midpoint_barrier == pytest.approx(-0.5)


def test_barrier_needs_both_endpoints_and_reports_nan() -> None:
    with pytest.raises(OptionError, match="a = 0 and a = 1"):
        barrier(np.array([0.0, 0.5]), np.array([1.0, 2.0]), higher_is_better=False)
    b = barrier(np.array([0.0, 0.5, 1.0]), np.array([1.0, np.inf, 1.0]), higher_is_better=False)
    assert math.isnan(b.height)
    no_mid = barrier(np.array([0.0, 1.0]), np.array([1.0, 2.0]), higher_is_better=False)
    assert no_mid.midpoint is None and no_mid.height == 0.0


def test_barriers_of_curve_all_metrics() -> None:
    ms = [Metrics(0.9, 0.3, -0.3, 10), Metrics(0.6, 0.9, -0.9, 10), Metrics(0.8, 0.5, -0.5, 10)]
    out = barriers(Curve((0.0, 0.5, 1.0), tuple(ms)))
    assert out["loss"].height == pytest.approx(0.9 - 0.4)
    assert out["accuracy"].height == pytest.approx(0.85 - 0.6)
    assert out["logprob"].height == pytest.approx(-0.4 + 0.9)
    with pytest.raises(OptionError):
        Curve((0.0, 0.0), tuple(ms[:2]))


# -- grids ----------------------------------------------------------------------------------
def test_path_positions() -> None:
    p = path_positions(21)
    assert len(p) == 21 and p[0] == 0.0 and p[-1] == 1.0 and 0.5 in p
    assert 0.5 in path_positions(4) and len(path_positions(4)) == 5
    assert path_positions(2) == (0.0, 0.5, 1.0)
    for bad in (1, 0, -3):
        with pytest.raises(OptionError, match="--points"):
            path_positions(bad)


def test_from_zero_positions() -> None:
    p = from_zero_positions(11, 1.5)
    assert p[0] == 0.0 and 1.0 in p and p[-1] == 1.5 and len(p) == 16
    q = from_zero_positions(5, 1.3)  # step 0.25 overshoots 1.3: the last point is 1.3 itself
    assert q[-2:] == (1.25, 1.3)
    assert from_zero_positions(5, 1.0)[-1] == 1.0
    with pytest.raises(OptionError, match="--max-scale"):
        from_zero_positions(5, 0.5)


def test_plane_positions_cover_triangle_plus_margin() -> None:
    w = plane_positions(11, 0.2)
    assert (1.0, 0.0, 0.0) in w and (0.0, 1.0, 0.0) in w and (0.0, 0.0, 1.0) in w
    arr = np.array(w)
    assert arr.min() == pytest.approx(-0.2)
    np.testing.assert_allclose(arr.sum(axis=1), 1.0, atol=1e-12)
    assert len(w) == 17 * 18 // 2  # i, j >= -2, i + j <= 12
    assert len(plane_positions(3, 0.0)) == 6
    with pytest.raises(OptionError, match="--grid"):
        plane_positions(1, 0.2)


# -- factor interpolation -------------------------------------------------------------------
def _mod(
    seed: int, r: int = 3, alpha: float = 6.0, out: int = 5, inp: int = 4, rs: bool = False
) -> LoraModule:
    g = torch.Generator().manual_seed(seed)
    return LoraModule(torch.randn(r, inp, generator=g), torch.randn(out, r, generator=g), alpha, rs)


def test_factor_corners_are_bitwise_and_equal_scalings_interpolate_raw_factors() -> None:
    A = LoraAdapter({"m": _mod(1)})
    B = LoraAdapter({"m": _mod(2)})
    for w, src in (((1.0, 0.0), A), ((0.0, 1.0), B)):
        p = interpolate_factors([A, B], w)
        assert torch.equal(p["m"].A, src["m"].A) and torch.equal(p["m"].B, src["m"].B)
        assert p["m"].scaling == src["m"].scaling
    p = interpolate_factors([A, B], (0.7, 0.3))
    assert torch.equal(p["m"].A, 0.7 * A["m"].A + 0.3 * B["m"].A)
    assert torch.equal(p["m"].B, 0.7 * A["m"].B + 0.3 * B["m"].B)
    assert p["m"].scaling == A["m"].scaling


def test_factor_with_different_scalings_folds_scaling_into_B() -> None:
    ma, mb = _mod(1, alpha=6.0), _mod(2, alpha=2.0, rs=True)  # scalings 2.0 and 2/sqrt(3)
    A, B = LoraAdapter({"m": ma}), LoraAdapter({"m": mb})
    for a in (0.3, 0.5, 0.8, 1.4):
        want = ((1 - a) * ma.scaling * ma.B.double() + a * mb.scaling * mb.B.double()) @ (
            (1 - a) * ma.A.double() + a * mb.A.double()
        )
        got = interpolate_factors([A, B], (1 - a, a))["m"].delta(torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the corners are still the adapters' own modules
    q = interpolate_factors([A, B], (0.0, 1.0))["m"]
    assert torch.equal(q.B, mb.B) and q.scaling == mb.scaling


def test_missing_module_counts_as_zero() -> None:
    A = LoraAdapter({"m": _mod(1), "only_a": _mod(3)})
    B = LoraAdapter({"m": _mod(2)})
    assert one_sided([A, B]) == {"only_a": [0]}
    d_f = effective_delta([A, B], (0.6, 0.4), Space.factor)
    d_d = effective_delta([A, B], (0.6, 0.4), Space.delta)
    torch.testing.assert_close(d_f["only_a"], 0.36 * A["only_a"].delta(torch.float64))
    torch.testing.assert_close(d_d["only_a"], 0.6 * A["only_a"].delta(torch.float64))
    assert "only_a" not in interpolate_factors([A, B], (0.0, 1.0)).modules


def test_factor_needs_equal_ranks_delta_does_not() -> None:
    A = LoraAdapter({"m": _mod(1, r=2)})
    B = LoraAdapter({"m": _mod(2, r=3)})
    check_compatible([A, B], Space.delta)
    with pytest.raises(OptionError, match="m: ranks differ"):
        check_compatible([A, B], Space.factor)
    C = LoraAdapter({"m": _mod(2, out=6)})
    with pytest.raises(OptionError, match="shapes"):
        check_compatible([A, C], Space.delta)


def test_delta_gram_matches_dense() -> None:
    ads = [LoraAdapter({"m": _mod(s), "n": _mod(s + 10, r=2)}) for s in (1, 2)]
    ads.append(LoraAdapter({"m": _mod(7, alpha=1.0)}))
    g = delta_gram(ads)
    for i in range(3):
        for j in range(3):
            want = sum(
                float(torch.sum(ads[i].delta(m, torch.float64) * ads[j].delta(m, torch.float64)))
                for m in ("m", "n")
                if m in ads[i].modules and m in ads[j].modules
            )
            assert g[i, j] == pytest.approx(want, rel=1e-10)
