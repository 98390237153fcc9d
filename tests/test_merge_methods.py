"""Pure merge functions on hand-made tensors with known answers."""

from __future__ import annotations

import pytest
import torch

from coto_tools.merge.cat import cat
from coto_tools.merge.config import KnotsMerge, MajoritySign
from coto_tools.merge.dare import dare_linear, dare_ties, random_drop
from coto_tools.merge.knots import knots, knots_align
from coto_tools.merge.magnitude import magnitude_mask, magnitude_prune
from coto_tools.merge.svd import lowrank_svd, truncated_svd
from coto_tools.merge.task_arithmetic import task_arithmetic
from coto_tools.merge.ties import ties

T1 = torch.tensor([1.0, -2.0, 3.0, 0.5])
T2 = torch.tensor([2.0, 1.0, -1.0, -0.5])
ONES = torch.ones(2)


def test_ties_total_sign_by_hand() -> None:
    # sums 3, -1, 2, 0 -> signs +, -, +, + (0 elects +); mean over the agreeing entries
    out = ties([T1, T2], ONES, 1.0, MajoritySign.TOTAL)
    assert torch.equal(out, torch.tensor([1.5, -2.0, 3.0, 0.5]))


def test_ties_frequency_sign_by_hand() -> None:
    # sign counts 2, 0, 0, 0 -> all +
    out = ties([T1, T2], ONES, 1.0, MajoritySign.FREQUENCY)
    assert torch.equal(out, torch.tensor([1.5, 1.0, 3.0, 0.5]))


def test_ties_trim_by_hand() -> None:
    # density 0.5 keeps 2 of 4: T1 -> [0,-2,3,0]; T2 -> [2,1,0,0] (tie |1|=|-1| -> first index)
    out = ties([T1, T2], ONES, 0.5, MajoritySign.TOTAL)
    assert torch.equal(out, torch.tensor([2.0, -2.0, 3.0, 0.0]))


def test_ties_weights_after_election() -> None:
    # PEFT's semantics: the sign is elected on unweighted tensors, then weighted values averaged
    out = ties([T1, T2], torch.tensor([2.0, 0.5]), 1.0, MajoritySign.TOTAL)
    assert torch.equal(out, torch.tensor([(2.0 + 1.0) / 2, -4.0, 6.0, 1.0]))


def test_ties_of_one_tensor_is_itself() -> None:
    t = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ties([t], torch.ones(1), 1.0), t)


def test_magnitude_mask_matches_topk() -> None:
    t = torch.randn(37, 11, generator=torch.Generator().manual_seed(1))
    for density in (0.01, 0.2, 0.5, 0.93, 1.0):
        k = int(density * t.numel())
        ref = torch.zeros(t.numel(), dtype=torch.bool)
        ref[torch.topk(t.abs().reshape(-1), k).indices] = True
        assert torch.equal(magnitude_mask(t, density).reshape(-1), ref)


def test_magnitude_prune_by_hand() -> None:
    out = magnitude_prune([T1, T2], torch.tensor([1.0, -1.0]), 0.25)
    assert torch.equal(out, torch.tensor([-2.0, 0.0, 3.0, 0.0]))


def test_task_arithmetic_is_linear_in_weights() -> None:
    g = torch.Generator().manual_seed(2)
    ts = [torch.randn(4, 6, generator=g) for _ in range(3)]
    w1, w2 = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.3, 0.7, -1.0])
    lhs = task_arithmetic(ts, 2.0 * w1 - 3.0 * w2)
    rhs = 2.0 * task_arithmetic(ts, w1) - 3.0 * task_arithmetic(ts, w2)
    torch.testing.assert_close(lhs, rhs, rtol=1e-6, atol=1e-6)
    assert torch.equal(task_arithmetic([T1, T2], torch.tensor([1.0, -1.0])), T1 - T2)


def test_dare_density_one_is_identity() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([0.3, 0.7])
    assert torch.equal(random_drop(T1, 1.0, g), T1)
    assert torch.equal(dare_linear([T1, T2], w, 1.0, g), task_arithmetic([T1, T2], w))
    assert torch.equal(dare_ties([T1, T2], ONES, 1.0, g), ties([T1, T2], ONES, 1.0))


def test_dare_seeded() -> None:
    t = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))

    def run(seed: int) -> torch.Tensor:
        return dare_linear([t, -t * 0.5], torch.ones(2), 0.3, torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_dare_keeps_fraction_and_rescales() -> None:
    t = torch.ones(200, 200)
    out = random_drop(t, 0.25, torch.Generator().manual_seed(0))
    kept = out != 0
    assert torch.all(out[kept] == 4.0)
    assert abs(float(kept.float().mean()) - 0.25) < 0.01  # 40k Bernoulli(0.25): sd 0.002
    # PEFT draws the same mask from the global RNG seeded the same
    torch.manual_seed(0)
    assert torch.equal(torch.bernoulli(torch.full_like(t, 0.25)) * t / 0.25, out)


def _lora(g: torch.Generator, out_f: int, in_f: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(r, in_f, generator=g), torch.randn(out_f, r, generator=g)


def test_cat_equals_weighted_sum_of_deltas() -> None:
    g = torch.Generator().manual_seed(4)
    (a1, b1), (a2, b2) = _lora(g, 9, 7, 2), _lora(g, 9, 7, 3)
    A, B = cat([a1, a2], [b1, b2], [0.7, -1.3], [2.0, 0.5])
    assert A.shape == (5, 7) and B.shape == (9, 5)
    ref = 0.7 * 2.0 * b1 @ a1 - 1.3 * 0.5 * b2 @ a2
    torch.testing.assert_close(B @ A, ref, rtol=0, atol=1e-6)


def test_lowrank_svd_matches_dense_svd() -> None:
    g = torch.Generator().manual_seed(5)
    b, a = torch.randn(20, 6, generator=g), torch.randn(6, 15, generator=g)
    d = (b @ a).double()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    for r in (2, 6, 10):
        A, B, energy = lowrank_svd(b, a, r)
        k = min(r, 6)
        assert A.shape == (k, 15) and B.shape == (20, k)
        ref = (u[:, :k] * s[:k]) @ vh[:k]
        torch.testing.assert_close((B @ A).double(), ref, rtol=0, atol=1e-4)
        assert energy == pytest.approx(float((s[:k] ** 2).sum() / (s**2).sum()), rel=1e-6)


@pytest.mark.parametrize("shape", [(30, 12), (12, 30)])
def test_truncated_svd_is_best_rank_r(shape: tuple[int, int]) -> None:
    d = torch.randn(*shape, generator=torch.Generator().manual_seed(6))
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    A, B, energy = truncated_svd(d, 4)
    torch.testing.assert_close((B @ A).double(), (u[:, :4] * s[:4]) @ vh[:4], rtol=0, atol=1e-5)
    assert energy == pytest.approx(float((s[:4] ** 2).sum() / (s**2).sum()), rel=1e-9)
    A, B, energy = truncated_svd(d, 100)  # rank capped at min(out, in), everything kept
    assert A.shape[0] == 12 and energy == pytest.approx(1.0)
    torch.testing.assert_close(B @ A, d, rtol=0, atol=1e-5)


def test_knots_align_reconstructs_each_delta() -> None:
    g = torch.Generator().manual_seed(7)
    (a1, b1), (a2, b2) = _lora(g, 10, 8, 3), _lora(g, 10, 8, 2)
    U, blocks = knots_align([a1, a2], [b1, b2], [0.5, 2.0])
    torch.testing.assert_close(U.T @ U, torch.eye(U.shape[1], dtype=U.dtype), atol=1e-10, rtol=0)
    torch.testing.assert_close(U @ blocks[0], (0.5 * b1 @ a1).double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(U @ blocks[1], (2.0 * b2 @ a2).double(), atol=1e-5, rtol=0)


def test_knots_task_arithmetic_is_the_weighted_sum() -> None:
    g = torch.Generator().manual_seed(8)
    (a1, b1), (a2, b2) = _lora(g, 10, 8, 3), _lora(g, 10, 8, 2)
    A, B, energy = knots(
        [a1, a2], [b1, b2], [0.5, 2.0], [1.0, -0.4], rank=5, inner=KnotsMerge.TASK_ARITHMETIC
    )
    ref = 0.5 * b1 @ a1 - 0.4 * 2.0 * b2 @ a2
    torch.testing.assert_close(B @ A, ref, atol=1e-5, rtol=0)
    assert energy == pytest.approx(1.0)


def test_knots_ties_of_one_adapter_is_itself() -> None:
    a, b = _lora(torch.Generator().manual_seed(9), 10, 8, 3)
    A, B, _ = knots([a], [b], [2.0], [1.0], rank=3, inner=KnotsMerge.TIES, density=1.0)
    torch.testing.assert_close(B @ A, 2.0 * b @ a, atol=1e-5, rtol=0)


def test_knots_ties_differs_from_plain_sum_on_conflicts() -> None:
    # a task and its negation: TIES elects one sign per entry (task arithmetic would cancel)
    a, b = _lora(torch.Generator().manual_seed(10), 6, 5, 2)
    A, B, _ = knots([a, a], [b, -b], [1.0, 1.0], [1.0, 1.0], rank=4, density=1.0)
    assert float((B @ A).norm()) > 0.1 * float((b @ a).norm())
