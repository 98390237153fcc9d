"""Players: modules grouped by module, layer, kind or tower."""

from __future__ import annotations

import numpy as np
import pytest

from coto_tools.adapters.players import Players, make_players
from coto_tools.errors import OptionError

BERT = [
    f"bert.encoder.layer.{i}.attention.self.{p}" for i in (1, 0) for p in ("value", "query")
] + ["bert.encoder.layer.0.output.dense"]

CLIP = [
    "vision_model.encoder.layers.0.self_attn.q_proj",
    "text_model.encoder.layers.1.self_attn.v_proj",
    "text_model.encoder.layers.0.self_attn.q_proj",
    "vision_model.encoder.layers.0.self_attn.v_proj",
]


def test_module_players_are_ordered_by_layer_then_kind() -> None:
    p = make_players(BERT, "module")
    assert p.names == (
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.attention.self.query",
        "bert.encoder.layer.1.attention.self.value",
    )
    assert all(m == (n,) for n, m in zip(p.names, p.members, strict=True))


def test_layer_players() -> None:
    p = make_players(BERT, "layer")
    assert p.names == ("layer0", "layer1")
    assert set(p.members[0]) == {
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.0.output.dense",
    }
    assert set(p.members[1]) == {
        "bert.encoder.layer.1.attention.self.query",
        "bert.encoder.layer.1.attention.self.value",
    }


def test_kind_players() -> None:
    p = make_players(BERT, "kind")
    assert p.names == ("q", "v", "down")
    assert set(p.members[0]) == {
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.1.attention.self.query",
    }
    assert p.members[2] == ("bert.encoder.layer.0.output.dense",)


def test_multi_tower_labels() -> None:
    assert make_players(CLIP, "tower").names == ("text", "vision")
    assert make_players(CLIP, "layer").names == ("text.layer0", "text.layer1", "vision.layer0")
    kinds = make_players(CLIP, "kind")
    assert kinds.names == ("text.q", "text.v", "vision.q", "vision.v")
    assert kinds.members[1] == ("text_model.encoder.layers.1.self_attn.v_proj",)


@pytest.mark.parametrize("grouping", ["layer", "kind"])
def test_unknown_layout_refuses_layer_and_kind(grouping: str) -> None:
    names = [*BERT, "classifier"]
    with pytest.raises(OptionError, match=rf"cannot group by {grouping}.*classifier"):
        make_players(names, grouping)


@pytest.mark.parametrize("grouping", ["module", "tower"])
def test_unknown_layout_still_groups_by_module_and_tower(grouping: str) -> None:
    p = make_players(["foo", "bar.baz"], grouping)
    assert sorted(p.modules) == ["bar.baz", "foo"]


def test_bad_grouping_and_empty() -> None:
    with pytest.raises(OptionError, match="unknown player grouping 'heads'.*module, layer"):
        make_players(BERT, "heads")
    with pytest.raises(OptionError, match="no players"):
        make_players([], "module")
    with pytest.raises(OptionError, match="belongs to two players"):
        Players(("a", "b"), (("x",), ("x",)))


def test_masks_to_gates_and_modules() -> None:
    p = make_players(BERT, "layer")
    gates = p.gates([True, False])
    assert gates == {m: 1.0 for m in p.members[0]} | {m: 0.0 for m in p.members[1]}
    assert p.active_modules(np.array([False, True])) == list(p.members[1])
    with pytest.raises(OptionError, match="mask has shape"):
        p.gates([True])
