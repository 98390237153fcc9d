"""The float-only TIES / trimming path equals the plain mask-based one (PEFT's formulation),
and batched reading in the merge engine gives the same merge."""

from __future__ import annotations

import pytest
import torch

from coto_tools.adapters import LoraAdapter, LoraModule, save_adapter
from coto_tools.merge import engine as engine_mod
from coto_tools.merge.config import MajoritySign, MergeConfig
from coto_tools.merge.engine import merge_adapters, merge_files
from coto_tools.merge.magnitude import magnitude_mask, magnitude_trim
from coto_tools.merge.task_arithmetic import stack_weights
from coto_tools.merge.ties import disjoint_merge, majority_sign_mask, ties


def _reference_ties(ts, w, density, sign):  # type: ignore[no-untyped-def]
    """PEFT's merge_utils.ties, step by step, with boolean masks."""
    trimmed = torch.stack([t * magnitude_mask(t, density).to(t.dtype) for t in ts])
    mask = majority_sign_mask(trimmed, sign)
    return disjoint_merge(trimmed * stack_weights(trimmed, w), mask)


def _tensors(n: int, kind: str, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "ints":  # heavy ties at every threshold, exact zeros, cancelling sums
        ts = [torch.randint(-3, 4, (13, 11), generator=g).to(dtype) for _ in range(n)]
    else:
        ts = [torch.randn(13, 11, generator=g).to(dtype) for _ in range(n)]
        ts[0][2] = 0.0
    return ts


@pytest.mark.parametrize("kind", ["ints", "normal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("sign", list(MajoritySign))
def test_fast_ties_equals_mask_formulation(
    kind: str, dtype: torch.dtype, n: int, sign: MajoritySign
) -> None:
    ts = _tensors(n, kind, dtype, seed=n)
    w = torch.tensor([0.7, -1.3, 2.0, 0.25, 1.0][:n])
    for density in (0.2, 0.5, 0.9, 1.0):
        got = ties(ts, w, density, sign)
        ref = _reference_ties(ts, w, density, sign)
        assert got.dtype == ref.dtype
        assert torch.equal(got, ref), (density, sign)


def test_ties_float16_weights_keep_the_promoted_dtype() -> None:
    ts = [t.half() for t in _tensors(2, "normal", torch.float32, seed=9)]
    w = torch.tensor([1.0, 0.5])
    ref = _reference_ties(ts, w, 0.5, MajoritySign.TOTAL)
    got = ties(ts, w, 0.5)
    assert got.dtype == ref.dtype == torch.float32 and torch.equal(got, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", ["ints", "normal", "zeros"])
def test_magnitude_trim_equals_mask_bit_for_bit(dtype: torch.dtype, kind: str) -> None:
    g = torch.Generator().manual_seed(3)
    if kind == "ints":
        t = torch.randint(-3, 4, (40, 30), generator=g).to(dtype)
    elif kind == "zeros":
        t = torch.zeros(40, 30, dtype=dtype)
        t[0, :7] = -2.0
    else:
        t = torch.randn(40, 30, generator=g).to(dtype)
    for density in (0.001, 0.1, 0.5, 0.99, 1.0):
        got = magnitude_trim(t, density)
        ref = t * magnitude_mask(t, density).to(dtype)
        assert torch.equal(got, ref)
        assert torch.equal(got.signbit(), ref.signbit())  # even the signs of the zeros


def _adapter(seed: int, layers: int = 3) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for layer in range(layers):
        for proj, (i, o) in {"q_proj": (12, 12), "up_proj": (12, 20)}.items():
            mods[f"model.layers.{layer}.mlp.{proj}"] = LoraModule(
                torch.randn(4, i, generator=g), torch.randn(o, 4, generator=g), 8.0
            )
    return LoraAdapter(mods)


@pytest.mark.parametrize("space", ["factor", "delta"])
def test_batched_reading_gives_the_same_merge(
    tmp_path, monkeypatch: pytest.MonkeyPatch, space: str
) -> None:  # type: ignore[no-untyped-def]
    a, b = _adapter(1), _adapter(2)
    paths = [save_adapter(a, tmp_path / "a"), save_adapter(b, tmp_path / "b")]
    cfg = MergeConfig(method="ties", density=0.5, space=space, weights=(1.0, 0.6))
    ref = merge_adapters([a, b], cfg).adapter
    batches: list[int] = []
    real = engine_mod._next_batch

    def spy(sources, order, start):  # type: ignore[no-untyped-def]
        end = real(sources, order, start)
        batches.append(end - start)
        return end

    monkeypatch.setattr(engine_mod, "_next_batch", spy)
    # q_proj and up_proj of one layer, both inputs, float32: 2 * 4 * 4 * ((12 + 12) + (12 + 20))
    monkeypatch.setattr(engine_mod, "READ_BATCH_BYTES", 2 * 4 * 4 * 56)
    got = merge_files(paths, cfg, tmp_path / "m").adapter
    assert batches == [2, 2, 2]  # two modules (both inputs) per batch under this budget
    for name, m in ref.modules.items():
        assert torch.equal(got.modules[name].A, m.A) and torch.equal(got.modules[name].B, m.B)
