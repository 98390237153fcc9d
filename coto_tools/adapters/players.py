"""Players: named groups of adapter modules (one module, one layer, one kind, one tower).

Shapley games, pruning strategies and the CoTo trainer's gate groups all speak in players.
Modules with no parsed layer (``layer`` grouping) or kind (``kind`` grouping), such as BERT's
``bert.pooler.dense`` or an ``lm_head``, form one last player named :data:`OTHER`
(:attr:`Players.other` lists them); a players map (:func:`players_from_map`, ``--players-map``)
names players by regular expressions for any layout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from coto_tools.adapters._config import search_bounded
from coto_tools.adapters.keys import ModuleKey, kind_sort_key, parse_module_name
from coto_tools.errors import OptionError

OTHER = "other"
"""The player of the modules a layer/kind grouping (or a players map) cannot place."""


class Grouping(str, Enum):
    module = "module"
    layer = "layer"
    kind = "kind"
    tower = "tower"


@dataclass(frozen=True)
class Players:
    """``names[i]`` is player i; ``members[i]`` the adapter modules it switches together."""

    names: tuple[str, ...]
    members: tuple[tuple[str, ...], ...]
    grouping: str = "module"

    def __post_init__(self) -> None:
        if len(self.names) != len(self.members):
            raise OptionError("players: names and members differ in length")
        if not self.names:
            raise OptionError("players: no players (the adapter has no modules)")
        seen: set[str] = set()
        for m in self.members:
            for name in m:
                if name in seen:
                    raise OptionError(f"players: module {name} belongs to two players")
                seen.add(name)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def modules(self) -> list[str]:
        return [n for m in self.members for n in m]

    def active_modules(self, mask: Sequence[bool] | np.ndarray) -> list[str]:
        """Modules switched on by a boolean mask over players."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self),):
            raise OptionError(f"mask has shape {mask.shape}, expected ({len(self)},)")
        return [n for on, m in zip(mask, self.members, strict=True) if on for n in m]

    def gates(self, mask: Sequence[bool] | np.ndarray) -> dict[str, float]:
        """Module -> gate (1.0 or 0.0) for a boolean mask over players."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self),):
            raise OptionError(f"mask has shape {mask.shape}, expected ({len(self)},)")
        return {
            n: (1.0 if on else 0.0) for on, m in zip(mask, self.members, strict=True) for n in m
        }

    @property
    def other(self) -> tuple[str, ...]:
        """The modules of the :data:`OTHER` player (no parsed layer/kind, or unmapped)."""
        if self.grouping == "module" or OTHER not in self.names:
            return ()
        return self.members[self.names.index(OTHER)]

    def keys(self) -> list[ModuleKey | None]:
        """For module players, the parsed key of each; ``None`` for groups."""
        if self.grouping != "module":
            return [None] * len(self)
        return [parse_module_name(m[0]) for m in self.members]


def _sorted_modules(names: Iterable[str]) -> list[tuple[str, ModuleKey]]:
    keyed = [(n, parse_module_name(n)) for n in names]
    return sorted(
        keyed,
        key=lambda nk: (
            nk[1].tower,
            -1 if nk[1].layer is None else nk[1].layer,
            kind_sort_key(nk[1].kind),
            nk[0],
        ),
    )


def make_players(
    module_names: Iterable[str], grouping: Grouping | str = Grouping.module
) -> Players:
    """Group adapter modules into players (ordered by tower, layer, kind).

    ``layer`` and ``kind`` groupings put modules whose layer (or kind) is unknown into one last
    player :data:`OTHER` (:attr:`Players.other`); the grouping fails only when no module has one.
    """
    try:
        g = Grouping(grouping)
    except ValueError:
        allowed = ", ".join(x.value for x in Grouping)
        raise OptionError(
            f"unknown player grouping {grouping!r}; choose one of {allowed}"
        ) from None
    keyed = _sorted_modules(module_names)
    if g is Grouping.module:
        return Players(tuple(n for n, _ in keyed), tuple((n,) for n, _ in keyed), "module")
    groups: dict[str, list[str]] = {}
    unknown: list[str] = []
    placed = [
        (n, k)
        for n, k in keyed
        if (k.layer if g is Grouping.layer else k.kind if g is Grouping.kind else 0) is not None
    ]
    multi = _multi_tower(placed) if placed else False
    for name, key in keyed:
        if g is Grouping.layer:
            if key.layer is None:
                unknown.append(name)
                continue
            label = f"{key.tower}.layer{key.layer}" if multi else f"layer{key.layer}"
        elif g is Grouping.kind:
            if key.kind is None:
                unknown.append(name)
                continue
            label = f"{key.tower}.{key.kind}" if multi else key.kind
        else:
            label = key.tower
        groups.setdefault(label, []).append(name)
    if unknown and not groups:
        raise OptionError(
            f"cannot group by {g.value}: no module has a recognised layout (e.g. {unknown[0]}); "
            "use --players module or --players-map FILE"
        )
    if OTHER in groups:
        raise OptionError(f"a {g.value} is named {OTHER!r}, the name of the unplaced modules")
    if g is Grouping.kind:
        order = sorted(
            groups,
            key=lambda lab: (
                lab.rsplit(".", 1)[0] if "." in lab else "",
                kind_sort_key(lab.rsplit(".", 1)[-1]),
            ),
        )
        groups = {k: groups[k] for k in order}
    if unknown:
        groups[OTHER] = unknown
    return Players(tuple(groups), tuple(tuple(v) for v in groups.values()), g.value)


def read_players_map(path: str | Path) -> dict[str, str]:
    """``{regex: player name}`` from a JSON object file (order kept: the first match wins)."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise OptionError(f"--players-map {p}: cannot read a JSON object: {exc}") from None
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, str) for v in obj.values()):
        raise OptionError(
            f'--players-map {p}: expected a JSON object {{"regex": "player name", ...}}'
        )
    return obj


def players_from_map(module_names: Iterable[str], mapping: Mapping[str, str]) -> Players:
    """Players named by ``mapping`` (``regex -> player``; ``re.search`` on the module name without
    PEFT's prefix; the first matching regex wins); modules no regex matches form :data:`OTHER`.
    Players are ordered as their first module in tower/layer/kind order."""
    rules = []
    for pattern, player in mapping.items():
        try:
            rules.append((re.compile(pattern), player))
        except re.error as exc:
            raise OptionError(f"players map: bad regex {pattern!r}: {exc}") from None
        if not player or player == OTHER:
            raise OptionError(f"players map: player name {player!r} (empty or {OTHER!r})")
    groups: dict[str, list[str]] = {}
    unmatched: list[str] = []
    for name, key in _sorted_modules(module_names):
        found = next(
            (pl for rx, pl in rules if search_bounded(rx.pattern, key.name, source="players map")),
            None,
        )
        if found is None:
            unmatched.append(name)
        else:
            groups.setdefault(found, []).append(name)
    if not groups:
        raise OptionError("players map: no regex matches any adapter module")
    if unmatched:
        groups[OTHER] = unmatched
    return Players(tuple(groups), tuple(tuple(v) for v in groups.values()), "map")


def _multi_tower(keyed: list[tuple[str, ModuleKey]]) -> bool:
    return len({k.tower for _, k in keyed}) > 1
