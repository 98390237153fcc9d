"""The fast paths of delta-space merging agree with the exact references."""

from __future__ import annotations

import pytest
import torch

from coto_tools.merge import svd as svd_mod
from coto_tools.merge.config import MajoritySign
from coto_tools.merge.magnitude import kth_largest, magnitude_mask
from coto_tools.merge.svd import truncated_svd
from coto_tools.merge.ties import ties, ties_consuming


def _rel_product_error(A: torch.Tensor, B: torch.Tensor, d: torch.Tensor, r: int) -> float:
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    ref = (u[:, :r] * s[:r]) @ vh[:r]
    return float(((B.double() @ A.double()) - ref).norm() / ref.norm())


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    bounds: list[float] = []
    real = svd_mod._wedin_bound

    def spy(*args):  # type: ignore[no-untyped-def]
        bounds.append(real(*args))
        return bounds[-1]

    monkeypatch.setattr(svd_mod, "_wedin_bound", spy)
    return bounds


@pytest.mark.parametrize("shape", [(600, 300), (300, 600)])
def test_randomized_svd_matches_exact_svd_on_a_gapped_spectrum(
    shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(0)
    out_f, in_f = shape
    signal = torch.randn(out_f, 12, generator=g) @ torch.randn(12, in_f, generator=g)
    d = signal + 0.05 * torch.randn(out_f, in_f, generator=g)  # noise: like a TIES residue
    bounds = _spy(monkeypatch)
    A, B, energy = truncated_svd(d, 12)
    assert len(bounds) == 1 and bounds[0] < svd_mod.SUBSPACE_TOL  # randomized result kept
    assert _rel_product_error(A, B, d, 12) < 1e-5
    s = torch.linalg.svdvals(d.double())
    assert energy == pytest.approx(float((s[:12] ** 2).sum() / (s**2).sum()), rel=1e-6)


def test_randomized_svd_falls_back_without_a_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    d = torch.randn(400, 200, generator=torch.Generator().manual_seed(1))  # flat spectrum
    bounds = _spy(monkeypatch)
    A, B, _ = truncated_svd(d, 8)
    assert len(bounds) == 1 and not bounds[0] < svd_mod.SUBSPACE_TOL  # exact route taken
    assert _rel_product_error(A, B, d, 8) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # numpy / sampled route
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros"])
def test_kth_largest_equals_kthvalue_on_large_inputs(kind: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    n = 300_001
    if kind == "normal":
        x = torch.randn(n, generator=g).abs()
    elif kind == "ties":
        x = torch.randint(0, 7, (n,), generator=g).float()
    else:
        x = torch.zeros(n)
        x[:10] = 1.0
    x = x.to(dtype)
    for k in (1, 2, n // 3, n // 2, n - 1, n):
        assert kth_largest(x, k) == torch.kthvalue(x, n - k + 1).values


def test_magnitude_mask_keeps_exactly_k_with_ties_first_by_index() -> None:
    x = torch.zeros(300_000)
    x[:5] = 2.0
    x[100:200] = 1.0  # tied at the threshold: the first ones by flat index are kept
    mask = magnitude_mask(x.reshape(600, 500), 15 / 300_000)
    flat = mask.reshape(-1)
    assert int(flat.sum()) == 15
    assert flat[:5].all() and flat[100:110].all() and not flat[110:].any()


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("sign", list(MajoritySign))
def test_ties_consuming_equals_ties(n: int, sign: MajoritySign) -> None:
    g = torch.Generator().manual_seed(3)
    ds = [torch.randn(40, 30, generator=g) for _ in range(n)]
    ds[0][:3] = 0.0
    ref = ties(ds, torch.ones(n), 0.4, sign)
    assert torch.equal(ties_consuming([d.clone() for d in ds], 0.4, sign), ref)
