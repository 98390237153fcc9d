"""Pruning strategies on known layouts (BERT 6/12 layers, LLaMA 32, odd counts, CLIP towers)."""

from __future__ import annotations

import pytest

from coto_tools.errors import OptionError
from coto_tools.prune.strategies import (
    Strategy,
    StrategyKind,
    keep_count,
    parse_strategies,
    parse_strategy,
    select_strategy,
    third_layers,
)


def bert(n: int, kinds: tuple[str, ...] = ("query", "key", "value")) -> list[str]:
    return [f"encoder.layer.{i}.attention.self.{k}" for i in range(n) for k in kinds]


def llama(n: int) -> list[str]:
    return [f"model.layers.{i}.self_attn.{k}_proj" for i in range(n) for k in "qkvo"]


def clip(n_text: int, n_vision: int) -> list[str]:
    return [
        f"{t}_model.encoder.layers.{i}.self_attn.{k}_proj"
        for t, n in (("text", n_text), ("vision", n_vision))
        for i in range(n)
        for k in "qkv"
    ]


def layers_of(names: list[str]) -> set[int]:
    return {int(n.split(".layer")[1].split(".")[1]) for n in names}


@pytest.mark.parametrize(
    ("n", "low", "middle", "high"),
    [
        (6, {0, 1}, {2, 3}, {4, 5}),
        (12, set(range(4)), set(range(4, 8)), set(range(8, 12))),
        (32, set(range(11)), set(range(11, 22)), set(range(22, 32))),
        (5, {0, 1}, {2, 3}, {4}),
        (7, {0, 1, 2}, {3, 4}, {5, 6}),
    ],
)
def test_thirds_on_single_tower(n: int, low: set[int], middle: set[int], high: set[int]) -> None:
    names = bert(n) if n != 32 else llama(n)
    for strat, want in (("low", low), ("middle", middle), ("high", high)):
        kept = select_strategy(names, strat)
        assert layers_of(kept) == want
        per_layer = 4 if n == 32 else 3
        assert len(kept) == per_layer * len(want)  # every kind of a kept layer is kept


@pytest.mark.parametrize("n", [5, 6, 7, 12, 32])
def test_everyother_parities_partition_the_layers(n: int) -> None:
    names = bert(n) if n != 32 else llama(n)
    even = select_strategy(names, "everyother-even")
    odd = select_strategy(names, "everyother-odd")
    assert layers_of(even) == set(range(0, n, 2))
    assert layers_of(odd) == set(range(1, n, 2))
    assert sorted(even + odd) == sorted(names)
    assert select_strategy(names, "everyother") == even


def test_kinds_and_aliases() -> None:
    names = llama(4)
    q = select_strategy(names, "kind:q")
    assert q == [f"model.layers.{i}.self_attn.q_proj" for i in range(4)]
    for alias in ("query", "q", "kind:query", "q_proj", "QUERY"):
        assert select_strategy(names, alias) == q
    assert select_strategy(names, "kind:out_proj") == [
        f"model.layers.{i}.self_attn.o_proj" for i in range(4)
    ]
    assert select_strategy(bert(3), "value") == [
        f"encoder.layer.{i}.attention.self.value" for i in range(3)
    ]


def test_two_towers_split_within_each_tower() -> None:
    names = clip(12, 6)
    low = select_strategy(names, "low")
    assert {n for n in low if n.startswith("text")} == {
        f"text_model.encoder.layers.{i}.self_attn.{k}_proj" for i in range(4) for k in "qkv"
    }
    assert {n for n in low if n.startswith("vision")} == {
        f"vision_model.encoder.layers.{i}.self_attn.{k}_proj" for i in range(2) for k in "qkv"
    }
    high = select_strategy(names, "high")
    assert {n for n in high if n.startswith("vision")} == {
        f"vision_model.encoder.layers.{i}.self_attn.{k}_proj" for i in (4, 5) for k in "qkv"
    }
    odd = select_strategy(names, "everyother-odd")
    assert len(odd) == 3 * (6 + 3)
    v = select_strategy(names, "value")
    assert len(v) == 18 and all(n.endswith("v_proj") for n in v)


def test_all_none_and_order() -> None:
    names = list(reversed(bert(2)))
    assert select_strategy(names, "all") == bert(2)  # tower/layer/kind order
    assert select_strategy(names, "none") == []


def test_third_layers_helper_small_counts() -> None:
    assert third_layers([0, 1]) == ([0], [1], [])
    assert third_layers([3]) == ([3], [], [])
    assert third_layers([4, 0, 2, 2]) == ([0], [2], [4])


def test_unknown_layout_is_a_clear_error() -> None:
    names = ["mlp_a", "mlp_b"]
    for strat in ("low", "everyother-even", "kind:q"):
        with pytest.raises(OptionError, match="unrecognised layout"):
            select_strategy(names, strat)
    assert select_strategy(names, "all") == ["mlp_a", "mlp_b"]
    assert len(select_strategy(names, "random:0.5", seed=1)) == 1


def test_missing_kind_names_the_kinds_present() -> None:
    with pytest.raises(OptionError, match=r"kinds present: \['q', 'v'\]"):
        select_strategy(bert(2, ("query", "value")), "key")


def test_shapley_top_and_bottom_modules_and_layers() -> None:
    names = bert(3)
    values = {n: float(i) for i, n in enumerate(names)}  # later modules are worth more
    top = select_strategy(names, "shapley-top:0.34", shapley=values)  # floor(9*.34+.5) = 3
    assert top == names[-3:]
    bottom = select_strategy(names, "shapley-bottom:0.34", shapley=values)
    assert bottom == names[:3]
    layer_values = {"layer0": 5.0, "layer1": -1.0, "layer2": 2.0}
    kept = select_strategy(names, "shapley-top:0.5", shapley=layer_values)  # 2 of 3 layers
    assert layers_of(kept) == {0, 2} and len(kept) == 6
    with pytest.raises(OptionError, match="match no grouping"):
        select_strategy(names, "shapley-top:0.5", shapley={"nonsense": 1.0})
    with pytest.raises(OptionError, match="needs Shapley"):
        select_strategy(names, "shapley-top:0.5")


def test_norm_top_and_random() -> None:
    names = bert(2)
    norms = {n: 10.0 - i for i, n in enumerate(names)}
    assert select_strategy(names, "norm-top:0.5", norms=norms) == names[:3]
    r1 = select_strategy(names, "random:0.5", seed=3)
    assert r1 == select_strategy(names, "random:0.5", seed=3)
    assert len(r1) == 3
    draws = {tuple(select_strategy(names, Strategy(StrategyKind.random, fraction=0.5, seed=s)))
             for s in range(10)}  # fmt: skip
    assert len(draws) > 1
    assert select_strategy(names, "random:0") == [] and select_strategy(names, "random:1") == names


def test_keep_count_rounds_half_up() -> None:
    assert [keep_count(f, 4) for f in (0.0, 0.125, 0.375, 0.5, 1.0)] == [0, 1, 2, 2, 4]


def test_parse_strategies_defaults_and_expansion() -> None:
    default = [s.name for s in parse_strategies(None)]
    assert default == [
        "all", "everyother-even", "everyother-odd", "low", "middle", "high",
        "kind:q", "kind:k", "kind:v",
    ]  # fmt: skip
    rs = parse_strategies("random:0.5,all,all", seeds=(1, 2))
    assert [(s.name, s.seed) for s in rs] == [("random:0.5", 1), ("random:0.5", 2), ("all", None)]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("bogus", "unknown strategy"),
        ("random:1.5", "not in"),
        ("norm-top:-0.1", "not in"),
        ("shapley-top:x", "not a number"),
        ("random", "needs an argument"),
        ("low:0.5", "takes no argument"),
        ("kind:", "give a kind"),
    ],
)
def test_parse_errors(text: str, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        parse_strategy(text)
