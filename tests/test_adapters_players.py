"""Players: modules grouped by module, layer, kind or tower."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coto_tools.adapters.players import (
    OTHER,
    Players,
    make_players,
    players_from_map,
    read_players_map,
)
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
def test_unplaced_modules_go_to_other(grouping: str) -> None:
    names = [*BERT, "classifier", "bert.pooler.dense"]
    p = make_players(names, grouping)
    assert p.names[-1] == OTHER and set(p.other) == {"classifier", "bert.pooler.dense"}
    assert p.names[:-1] == make_players(BERT, grouping).names  # the rest grouped as before
    assert sorted(p.modules) == sorted(names)
    assert make_players(BERT, grouping).other == ()
    with pytest.raises(OptionError, match=rf"cannot group by {grouping}: no module"):
        make_players(["classifier", "foo"], grouping)


def test_players_map(tmp_path: Path) -> None:
    names = [*BERT, "bert.pooler.dense"]
    path = tmp_path / "map.json"
    path.write_text(json.dumps({r"attention\.self\.(query|key)": "qk", r"layer\.1\.": "top"}))
    p = players_from_map(names, read_players_map(path))
    assert p.grouping == "map" and p.names == ("qk", "top", OTHER)
    assert all(".self.query" in m or ".self.key" in m for m in p.members[0])
    assert all("layer.1." in m and ".self.q" not in m for m in p.members[1])  # first match wins
    assert "bert.pooler.dense" in p.other and sorted(p.modules) == sorted(names)
    for bad in ("[1,2]", "{}", '{"(": "x"}', '{"x": "other"}', '{"nomatch": "x"}'):
        path.write_text(bad)
        with pytest.raises(OptionError, match="players.map|players map"):
            players_from_map(names, read_players_map(path))


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
