"""A task whose meaning changes while its name and options stay (e.g. other label prompts) is
not served values cached for the old meaning: the zero-shot cache and the Shapley game
fingerprint both key on :meth:`Task.identity`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coto_tools.adapters.players import Players
from coto_tools.shapley.game_adapter import game_fingerprint
from coto_tools.tasks import catalog
from coto_tools.tasks.tiny import TinyTask


def test_zero_shot_cache_misses_when_the_identity_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = catalog.describe_tasks(["tiny"], zero_shot=True, cache=tmp_path)[0]
    assert first.zero_shot is not None
    again = catalog.describe_tasks(["tiny"], zero_shot=False, cache=tmp_path)[0]
    assert again.zero_shot == first.zero_shot  # same identity: read from the cache

    def other(self: TinyTask) -> dict[str, Any]:
        return {"labels": list(self.labels), "prompts": ["something else"]}

    monkeypatch.setattr(TinyTask, "identity", other)
    changed = catalog.describe_tasks(["tiny"], zero_shot=False, cache=tmp_path)[0]
    assert changed.zero_shot is None  # not the old meaning's value


def test_game_fingerprint_covers_the_task_identity() -> None:
    players = Players(("a", "b"), (("a",), ("b",)))
    common: dict[str, Any] = dict(
        weights="w", task="tiny", task_variant={}, split="quick", players=players, metrics=["x"]
    )
    one = game_fingerprint(**common, identity={"labels": ["p", "q"], "prompts": ["P", "Q"]})
    same = game_fingerprint(**common, identity={"labels": ["p", "q"], "prompts": ["P", "Q"]})
    other = game_fingerprint(**common, identity={"labels": ["p", "q"], "prompts": ["A", "B"]})
    assert one == same and one != other
