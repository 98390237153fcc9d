"""Players: named groups of adapter modules (one module, one layer, one kind, one tower).

Shapley games, pruning strategies and the CoTo trainer's gate groups all speak in players.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from coto_tools.adapters.keys import ModuleKey, kind_sort_key, parse_module_name
from coto_tools.errors import OptionError


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

    ``layer`` and ``kind`` groupings need parsable names; modules whose layer (or kind) is
    unknown make that grouping fail with a message that says so.
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
    for name, key in keyed:
        if g is Grouping.layer:
            if key.layer is None:
                unknown.append(name)
                continue
            label = f"{key.tower}.layer{key.layer}" if _multi_tower(keyed) else f"layer{key.layer}"
        elif g is Grouping.kind:
            if key.kind is None:
                unknown.append(name)
                continue
            label = f"{key.tower}.{key.kind}" if _multi_tower(keyed) else key.kind
        else:
            label = key.tower
        groups.setdefault(label, []).append(name)
    if unknown:
        raise OptionError(
            f"cannot group by {g.value}: {len(unknown)} module(s) have an unrecognised layout "
            f"(e.g. {unknown[0]}); use --players module"
        )
    if g is Grouping.kind:
        order = sorted(
            groups,
            key=lambda lab: (
                lab.rsplit(".", 1)[0] if "." in lab else "",
                kind_sort_key(lab.rsplit(".", 1)[-1]),
            ),
        )
        groups = {k: groups[k] for k in order}
    return Players(tuple(groups), tuple(tuple(v) for v in groups.values()), g.value)


def _multi_tower(keyed: list[tuple[str, ModuleKey]]) -> bool:
    return len({k.tower for _, k in keyed}) > 1
