"""Property-based tests (hypothesis) of the merge methods on random small adapters.

Every property is checked on ``ΔW = s·B@A`` of each module against a float64 reference computed
here from the inputs (never from the code under test): cat is the weighted sum of the deltas,
task arithmetic is linear in its weights, TIES / DARE / factor-space linear of one adapter with
weight 1 give that adapter back, DARE at density 1 is task arithmetic, and permuting the inputs
together with their weights leaves cat / linear / task-arithmetic unchanged.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.merge import MergeConfig, MergeMethod, MergeSpace, merge_adapters

SETTINGS = settings(
    max_examples=25, deadline=3000, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
NAMES = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")


@st.composite
def adapters(draw, *, n_min: int = 1, n_max: int = 3, same_rank: bool = False):  # type: ignore[no-untyped-def]
    """``n`` adapters over the same modules (random shapes, ranks, alphas, rsLoRA) and a seed."""
    n = draw(st.integers(n_min, n_max))
    dims = [(draw(st.integers(1, 6)), draw(st.integers(1, 6))) for _ in NAMES]  # (out, in)
    rank = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        r = rank if same_rank else draw(st.integers(1, 4))
        alpha = draw(st.sampled_from([1.0, 2.0, 8.0, 16.0, 3.5]))
        rs = draw(st.booleans())
        mods = {
            name: LoraModule(
                torch.randn(r, i, generator=g), torch.randn(o, r, generator=g), alpha, use_rslora=rs
            )
            for name, (o, i) in zip(NAMES, dims, strict=True)
        }
        out.append(LoraAdapter(mods))
    return out


def weights(n: int):  # type: ignore[no-untyped-def]
    w = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False, width=32)
    return st.lists(w, min_size=n, max_size=n)


def ref_delta(m: LoraModule) -> torch.Tensor:
    """``s·B@A`` in float64, from the factors and the LoRA scaling rule (alpha/r or alpha/√r)."""
    r = m.A.shape[0]
    s = m.alpha / (r**0.5 if m.use_rslora else r)
    return s * (m.B.double() @ m.A.double())


def weighted_sum(ads: list[LoraAdapter], w: list[float], name: str) -> torch.Tensor:
    return sum(
        (wi * ref_delta(a.modules[name]) for a, wi in zip(ads, w, strict=True)),
        start=torch.zeros_like(ref_delta(ads[0].modules[name])),
    )


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 arithmetic against a float64 reference: relative to the largest entry."""
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * scale)


def merged_delta(ads: list[LoraAdapter], cfg: MergeConfig, name: str) -> torch.Tensor:
    return merge_adapters(ads, cfg).adapter.modules[name].delta()


@SETTINGS
@given(data=st.data(), ads=adapters())
def test_cat_is_the_weighted_sum_of_deltas(data: st.DataObject, ads: list[LoraAdapter]) -> None:
    w = data.draw(weights(len(ads)))
    result = merge_adapters(ads, MergeConfig(method=MergeMethod.CAT, weights=tuple(w)))
    for name in NAMES:
        close(result.adapter.modules[name].delta(), weighted_sum(ads, w, name))
        assert result.adapter.modules[name].rank == sum(a.modules[name].rank for a in ads)


@SETTINGS
@given(data=st.data(), ads=adapters(n_min=2))
def test_task_arithmetic_is_linear(data: st.DataObject, ads: list[LoraAdapter]) -> None:
    n = len(ads)
    w, u = data.draw(weights(n)), data.draw(weights(n))
    c = data.draw(st.floats(-3.0, 3.0, allow_nan=False, width=32))
    ta = MergeMethod.TASK_ARITHMETIC

    def delta(ws: list[float], name: str) -> torch.Tensor:
        return merged_delta(ads, MergeConfig(method=ta, weights=tuple(ws)), name).double()

    for name in NAMES:
        both = delta([a + c * b for a, b in zip(w, u, strict=True)], name)
        close(both, delta(w, name) + c * delta(u, name))  # TA(w + c u) = TA(w) + c TA(u)
        close(delta(w, name), weighted_sum(ads, w, name))


@SETTINGS
@given(ads=adapters(n_min=1, n_max=1), density=st.floats(0.05, 1.0))
def test_ties_of_one_adapter_is_itself(ads: list[LoraAdapter], density: float) -> None:
    """Factor space (PEFT's semantics: one input is merged linearly) at any density; delta
    space at density 1 (a lower density trims the delta, by design)."""
    for cfg in (
        MergeConfig(method=MergeMethod.TIES, weights=(1.0,), density=density),
        MergeConfig(method=MergeMethod.TIES, weights=(1.0,), density=1.0, space=MergeSpace.DELTA),
    ):
        for name in NAMES:
            close(merged_delta(ads, cfg, name), ref_delta(ads[0].modules[name]))


@SETTINGS
@given(data=st.data(), ads=adapters(same_rank=True), space=st.sampled_from(list(MergeSpace)))
def test_dare_at_density_one_is_task_arithmetic(
    data: st.DataObject, ads: list[LoraAdapter], space: MergeSpace
) -> None:
    """Nothing is dropped and the rescale 1/density is 1: DARE-linear is then the weighted sum
    (in factor space: PEFT's linear merge of the factors, compared with that merge)."""
    w = data.draw(weights(len(ads)))
    seed = data.draw(st.integers(0, 1000))
    dare = MergeConfig(
        method=MergeMethod.DARE_LINEAR, weights=tuple(w), density=1.0, space=space, seed=seed
    )
    plain = MergeConfig(method=MergeMethod.LINEAR, weights=tuple(w), space=space)
    for name in NAMES:
        got = merged_delta(ads, dare, name)
        close(got, merged_delta(ads, plain, name).double())
        if space is MergeSpace.DELTA or len(ads) == 1:
            close(got, weighted_sum(ads, w, name))


@SETTINGS
@given(ads=adapters(n_min=1, n_max=1))
def test_factor_linear_of_one_adapter_with_weight_one_is_itself(ads: list[LoraAdapter]) -> None:
    cfg = MergeConfig(method=MergeMethod.LINEAR, weights=(1.0,), space=MergeSpace.FACTOR)
    for name in NAMES:
        close(merged_delta(ads, cfg, name), ref_delta(ads[0].modules[name]))


@SETTINGS
@given(
    data=st.data(),
    ads=adapters(n_min=2, same_rank=True),
    method=st.sampled_from([MergeMethod.CAT, MergeMethod.LINEAR, MergeMethod.TASK_ARITHMETIC]),
)
def test_permuting_inputs_with_their_weights_changes_nothing(
    data: st.DataObject, ads: list[LoraAdapter], method: MergeMethod
) -> None:
    n = len(ads)
    w = data.draw(weights(n))
    perm = data.draw(st.permutations(range(n)))
    spaces = [MergeSpace.DELTA] if method is MergeMethod.CAT else list(MergeSpace)
    for space in spaces:
        a = MergeConfig(method=method, weights=tuple(w), space=space)
        b = MergeConfig(method=method, weights=tuple(w[i] for i in perm), space=space)
        for name in NAMES:
            close(
                merged_delta([ads[i] for i in perm], b, name),
                merged_delta(ads, a, name).double(),
            )
