"""The memory-lean delta-space paths agree with the plain ones: row-chunked TIES on ``c·B@A``
(:func:`ties_lowrank`) and the truncated SVD's block-wise float64 products."""

from __future__ import annotations

import pytest
import torch

from coto_tools.adapters import LoraAdapter, LoraModule
from coto_tools.merge import svd as svd_mod
from coto_tools.merge.config import MajoritySign, MergeConfig
from coto_tools.merge.engine import merge_adapters
from coto_tools.merge.magnitude import magnitude_mask
from coto_tools.merge.registry import ModuleParts
from coto_tools.merge.ties import lowrank_delta, ties_consuming, ties_lowrank


def _factors(
    n: int, out_f: int, in_f: int, rank: int, seed: int, integer: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    if integer:  # small integers: products exact, many ties at every threshold
        As = [torch.randint(-2, 3, (rank, in_f), generator=g).float() for _ in range(n)]
        Bs = [torch.randint(-2, 3, (out_f, rank), generator=g).float() for _ in range(n)]
    else:
        As = [torch.randn(rank, in_f, generator=g) for _ in range(n)]
        Bs = [torch.randn(out_f, rank, generator=g) for _ in range(n)]
    return As, Bs


def _reference(As, Bs, coefs, density, sign):  # type: ignore[no-untyped-def]
    deltas = [lowrank_delta(b, a, c) for a, b, c in zip(As, Bs, coefs, strict=True)]
    return ties_consuming(deltas, density, sign)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, None])
@pytest.mark.parametrize("sign", list(MajoritySign))
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("integer", [True, False])
def test_chunked_ties_equals_unchunked(
    chunk_rows: int | None, sign: MajoritySign, n: int, integer: bool
) -> None:
    As, Bs = _factors(n, 23, 17, 3, seed=n, integer=integer)
    coefs = [1.0, -0.5, 2.0][:n]
    for density in (0.3, 0.5, 1.0):
        ref = _reference(As, Bs, coefs, density, sign)
        got = ties_lowrank(As, Bs, coefs, density, sign, chunk_rows=chunk_rows)
        assert torch.equal(got, ref), (density, chunk_rows)


@pytest.mark.parametrize("chunk_rows", [1, 2, 5])
def test_one_task_keeps_exactly_k_with_ties_across_chunks(chunk_rows: int) -> None:
    # ΔW has 4 distinct magnitudes, each on many entries spread over all rows: the threshold
    # is tied, and the tied entries to keep straddle chunk boundaries.
    a = torch.tensor([[1.0, 2.0, -1.0, 3.0, 1.0, -2.0]])
    b = torch.tensor([[1.0], [-1.0], [2.0], [1.0], [-1.0], [1.0], [2.0]])
    d = b @ a
    for density in (0.1, 0.25, 0.5, 0.8):
        k = int(density * d.numel())
        got = ties_lowrank([a], [b], [1.0], density, chunk_rows=chunk_rows)
        assert int((got != 0).sum()) == k
        assert torch.equal(got, d * magnitude_mask(d, density))  # first ties by flat index


def test_density_below_one_entry_zeroes_everything() -> None:
    As, Bs = _factors(2, 5, 4, 2, seed=1, integer=False)
    assert not ties_lowrank(As, Bs, [1.0, 1.0], 0.01).any()  # k = int(0.01 * 20) = 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_factor_dtypes_match_the_float32_deltas(dtype: torch.dtype) -> None:
    As, Bs = _factors(2, 9, 11, 2, seed=4, integer=False)
    As, Bs = [a.to(dtype) for a in As], [b.to(dtype) for b in Bs]
    ref = ties_consuming(ModuleParts(As, Bs, [2.0, 0.5], [1.0, 1.0]).deltas(), 0.5)
    assert torch.equal(ties_lowrank(As, Bs, [2.0, 0.5], 0.5, chunk_rows=2), ref)


@pytest.mark.parametrize("transposed", [False, True])
def test_blockwise_float64_products(transposed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(svd_mod, "_CHUNK", 50)  # many blocks, one of them partial
    g = torch.Generator().manual_seed(5)
    d = torch.randn(37, 23, generator=g)
    if transposed:
        d = torch.randn(23, 37, generator=g).T
    x = torch.randn(23, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(svd_mod._mm64(d, x), d.double() @ x, rtol=1e-12, atol=1e-12)
    ref = float(d.double().square().sum())
    assert svd_mod._sq_norm64(d) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("shape", [(60, 40), (40, 60)])
def test_truncated_svd_unchanged_by_blockwise_products(
    shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(6)
    d = torch.randn(shape[0], 5, generator=g) @ torch.randn(5, shape[1], generator=g)
    d += 1e-3 * torch.randn(*shape, generator=g)
    A0, B0, e0 = svd_mod.truncated_svd(d.double(), 5)  # float64 input: the full products
    monkeypatch.setattr(svd_mod, "_CHUNK", 64)
    A1, B1, e1 = svd_mod.truncated_svd(d, 5)
    torch.testing.assert_close(B1 @ A1, (B0 @ A0).float(), rtol=0, atol=1e-5)
    assert e1 == pytest.approx(e0, rel=1e-6)


def test_engine_delta_ties_equals_the_unchunked_path() -> None:
    g = torch.Generator().manual_seed(7)

    shapes = {"q_proj": (24, 24), "up_proj": (24, 40), "down_proj": (40, 24)}

    def adapter(alpha: float) -> LoraAdapter:
        mods = {
            f"model.layers.0.{p}": LoraModule(
                torch.randn(4, i, generator=g), torch.randn(o, 4, generator=g), alpha
            )
            for p, (i, o) in shapes.items()
        }
        return LoraAdapter(mods)

    a, b = adapter(8.0), adapter(4.0)
    # the weighted vote: the election sees w_i s_i ΔW_i, as ties_consuming of the folded deltas
    cfg = MergeConfig(
        method="ties", space="delta", density=0.4, weights=(0.7, -1.3), rank=5, ties_vote="weighted"
    )
    res = merge_adapters([a, b], cfg)
    for name, m in res.adapter.modules.items():
        parts = ModuleParts([a[name].A, b[name].A], [a[name].B, b[name].B], [2.0, 1.0], [0.7, -1.3])
        A, B, _ = svd_mod.truncated_svd(ties_consuming(parts.deltas(), 0.4), 5)
        torch.testing.assert_close(m.B @ m.A, B @ A, rtol=0, atol=1e-5)
