"""Structured pruning strategies: named sets of whole adapters to keep (CoTo, arXiv 2506.05713).

The paper prunes whole adapters and reports eight selections: ``all`` (nothing pruned),
``everyother`` (alternate layers' adapters removed), ``low`` / ``middle`` / ``high`` (only that
third of the layers kept) and ``query`` / ``key`` / ``value`` (only that kind kept). coto-tools
adds Shapley-ranked, norm-ranked and random selections of a fraction of the adapters.

Conventions (per tower: a two-tower layout such as CLIP is split within each tower):

- ``everyother`` is reported with both parities: ``everyother-even`` keeps the layers with an
  even index (0, 2, 4, ...), ``everyother-odd`` the odd ones. ``select_strategy(..,
  "everyother")`` means ``everyother-even``; :func:`parse_strategies` expands it to both.
- thirds: a tower's distinct layer indices, sorted, are cut by ``numpy.array_split(layers, 3)``
  into low, middle, high. When the count is not divisible by 3 the first parts get one more:
  5 layers -> 2/2/1, 7 -> 3/2/2, 8 -> 3/3/2; with 2 layers ``high`` keeps nothing, with 1 only
  ``low`` keeps something.
- ``none`` keeps no adapter (the base model: the floor every strategy is measured against).
- fractions ``f`` keep ``k = floor(f·n + 0.5)`` of the ``n`` players (round half up); ties in a
  ranking are broken by the players' tower/layer/kind order.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from coto_tools.adapters.keys import ModuleKey, parse_module_name, strip_peft_prefix
from coto_tools.adapters.players import Players, make_players, players_from_map
from coto_tools.errors import OptionError


class StrategyKind(str, Enum):
    all = "all"
    none = "none"
    everyother_even = "everyother-even"
    everyother_odd = "everyother-odd"
    low = "low"
    middle = "middle"
    high = "high"
    kind = "kind"
    shapley_top = "shapley-top"
    shapley_bottom = "shapley-bottom"
    norm_top = "norm-top"
    random = "random"


_FRACTION_KINDS = (
    StrategyKind.shapley_top,
    StrategyKind.shapley_bottom,
    StrategyKind.norm_top,
    StrategyKind.random,
)
_THIRDS = {StrategyKind.low: 0, StrategyKind.middle: 1, StrategyKind.high: 2}

# accepted spellings -> canonical kind of coto_tools.adapters.keys
KIND_ALIASES: dict[str, str] = {
    "q": "q", "query": "q", "q_proj": "q",
    "k": "k", "key": "k", "k_proj": "k",
    "v": "v", "value": "v", "v_proj": "v",
    "qkv": "qkv", "c_attn": "qkv",
    "o": "o", "out": "o", "output": "o", "o_proj": "o", "out_proj": "o",
    "gate": "gate", "gate_proj": "gate",
    "up": "up", "up_proj": "up", "fc1": "up",
    "down": "down", "down_proj": "down", "fc2": "down",
}  # fmt: skip

DEFAULT_STRATEGIES = ("all", "everyother", "low", "middle", "high", "query", "key", "value")
ALLOWED_TEXT = (
    "all, none, everyother (= everyother-even and everyother-odd), everyother-even, "
    "everyother-odd, low, middle, high, kind:<k> (or query/key/value/q/k/v/...), shapley-top:<f>, "
    "shapley-bottom:<f>, norm-top:<f>, random:<f>"
)


@dataclass(frozen=True)
class Strategy:
    """One selection. ``arg``: the canonical kind for ``kind``; ``fraction`` for the ranked and
    random selections; ``seed`` for ``random`` (``None``: the seed passed to the selector)."""

    kind: StrategyKind
    arg: str | None = None
    fraction: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", StrategyKind(self.kind))
        if self.kind is StrategyKind.kind:
            if self.arg is None:
                raise OptionError("strategy kind:<k> needs a kind, e.g. kind:q")
            object.__setattr__(self, "arg", canonical_kind(self.arg))
        if self.kind in _FRACTION_KINDS:
            f = self.fraction
            if f is None or not (0.0 <= f <= 1.0) or math.isnan(f):
                raise OptionError(f"strategy {self.kind.value}: fraction {f} is not in [0, 1]")

    @property
    def name(self) -> str:
        """Canonical name (without the seed): ``all``, ``kind:q``, ``random:0.5``, ..."""
        if self.kind is StrategyKind.kind:
            return f"kind:{self.arg}"
        if self.kind in _FRACTION_KINDS:
            return f"{self.kind.value}:{self.fraction:g}"
        return self.kind.value

    @property
    def needs_layers(self) -> bool:
        return self.kind in (
            StrategyKind.everyother_even,
            StrategyKind.everyother_odd,
            *_THIRDS,
        )


def canonical_kind(text: str) -> str:
    """``query`` / ``q`` / ``q_proj`` -> ``q``; ``cross_q`` stays; unknown names pass through."""
    t = text.strip().lower()
    if t.startswith("cross_"):
        return "cross_" + KIND_ALIASES.get(t[6:], t[6:])
    return KIND_ALIASES.get(t, t)


def _fraction(text: str, spec: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise OptionError(f"strategy {spec!r}: {text!r} is not a number in [0, 1]") from None
    if not (0.0 <= f <= 1.0):
        raise OptionError(f"strategy {spec!r}: fraction {f:g} is not in [0, 1]")
    return f


def parse_strategy(text: str) -> Strategy:
    """One strategy from its name (see :data:`ALLOWED_TEXT`).

    ``everyother`` alone means ``everyother-even``; ``query``, ``q``, ``q_proj`` mean ``kind:q``.
    """
    spec = text.strip()
    low = spec.lower()
    head, sep, arg = low.partition(":")
    if not sep:
        if low == "everyother":
            return Strategy(StrategyKind.everyother_even)
        if low in KIND_ALIASES:
            return Strategy(StrategyKind.kind, arg=low)
        try:
            kind = StrategyKind(low)
        except ValueError:
            raise OptionError(f"unknown strategy {spec!r}; allowed: {ALLOWED_TEXT}") from None
        if kind is StrategyKind.kind or kind in _FRACTION_KINDS:
            raise OptionError(f"strategy {spec!r} needs an argument, e.g. {low}:0.5")
        return Strategy(kind)
    if head == "kind":
        if not arg:
            raise OptionError(f"strategy {spec!r}: give a kind, e.g. kind:q")
        return Strategy(StrategyKind.kind, arg=arg)
    try:
        kind = StrategyKind(head)
    except ValueError:
        raise OptionError(f"unknown strategy {spec!r}; allowed: {ALLOWED_TEXT}") from None
    if kind not in _FRACTION_KINDS:
        raise OptionError(f"strategy {head!r} takes no argument (got {spec!r})")
    return Strategy(kind, fraction=_fraction(arg, spec))


def parse_strategies(
    texts: str | Iterable[str] | None = None, *, seeds: Sequence[int] = (0,)
) -> list[Strategy]:
    """Strategies from a comma list (``None``: the paper's eight). ``everyother`` gives both
    parities; each ``random:<f>`` gives one strategy per seed. Duplicates are dropped."""
    if texts is None:
        texts = DEFAULT_STRATEGIES
    if isinstance(texts, str):
        texts = texts.split(",")
    items = [t.strip() for t in texts if t.strip()]
    if not items:
        raise OptionError(f"no strategies given; allowed: {ALLOWED_TEXT}")
    out: list[Strategy] = []
    for t in items:
        if t.lower() == "everyother":
            found = [Strategy(StrategyKind.everyother_even), Strategy(StrategyKind.everyother_odd)]
        else:
            s = parse_strategy(t)
            if s.kind is StrategyKind.random:
                if not seeds:
                    raise OptionError("random:<f> needs at least one seed (--seeds)")
                found = [Strategy(s.kind, fraction=s.fraction, seed=int(k)) for k in seeds]
            else:
                found = [s]
        out.extend(s for s in found if s not in out)
    return out


# -- layouts ------------------------------------------------------------------------------------
def _keys(module_names: Iterable[str]) -> list[ModuleKey]:
    """Parsed keys (carrying the names as given) in tower/layer/kind order."""
    players = make_players(module_names, "module")
    return [replace(parse_module_name(n), name=n) for n in players.names]


def _need_layers(keys: Sequence[ModuleKey], what: str) -> None:
    """Layer strategies choose among the modules with a layer index; the others (the ``other``
    player, e.g. ``bert.pooler.dense``) are never kept by them (a warning names them)."""
    bad = [k.name for k in keys if k.layer is None]
    if len(bad) == len(keys):
        raise OptionError(
            f"strategy {what} needs layer indices, but {len(bad)} module(s) have an unrecognised "
            f"layout (e.g. {bad[0]}); use kind:, shapley-, norm- or random: strategies"
        )
    if bad:
        warnings.warn(
            f"strategy {what}: {len(bad)} module(s) with no layer index (group 'other', e.g. "
            f"{bad[0]}) are off in it; layer strategies choose among the other modules",
            stacklevel=3,
        )


def third_layers(layers: Iterable[int]) -> tuple[list[int], list[int], list[int]]:
    """Distinct sorted ``layers`` split into (low, middle, high) by ``numpy.array_split``."""
    uniq = sorted(set(layers))
    parts = np.array_split(np.asarray(uniq, dtype=np.int64), 3)
    return tuple([int(x) for x in p] for p in parts)  # type: ignore[return-value]


def _by_layers(keys: Sequence[ModuleKey], kind: StrategyKind) -> list[str]:
    _need_layers(keys, kind.value)
    if kind in (StrategyKind.everyother_even, StrategyKind.everyother_odd):
        parity = 0 if kind is StrategyKind.everyother_even else 1
        return [k.name for k in keys if k.layer is not None and k.layer % 2 == parity]
    keep: set[tuple[str, int]] = set()
    for tower in {k.tower for k in keys}:
        part = third_layers(k.layer for k in keys if k.tower == tower and k.layer is not None)
        keep.update((tower, layer) for layer in part[_THIRDS[kind]])
    return [k.name for k in keys if (k.tower, k.layer) in keep]


def _by_kind(keys: Sequence[ModuleKey], want: str) -> list[str]:
    bad = [k.name for k in keys if k.kind is None]
    if len(bad) == len(keys):
        raise OptionError(
            f"strategy kind:{want} needs module kinds, but {len(bad)} module(s) have an "
            f"unrecognised layout (e.g. {bad[0]})"
        )
    kept = [k.name for k in keys if k.kind == want]
    if not kept:
        present = sorted({k.kind for k in keys if k.kind is not None})
        raise OptionError(
            f"strategy kind:{want}: no adapter of that kind; kinds present: {present}"
        )
    return kept


def resolve_players(
    module_names: Iterable[str],
    player_names: Iterable[str],
    *,
    players_map: Mapping[str, str] | None = None,
) -> Players:
    """The grouping (module, layer, kind or tower) whose player names are exactly
    ``player_names`` (e.g. the ``player`` column of ``shapley.csv``); with ``players_map``
    (``{regex: player}``, ``--players-map``), the players that map defines
    (:func:`~coto_tools.adapters.players.players_from_map`), which must be exactly those."""
    mods = list(module_names)
    want = {strip_peft_prefix(p) for p in player_names}
    if players_map is not None:
        mapped = players_from_map(mods, players_map)
        if set(mapped.names) == want:
            return mapped
        missing, extra = sorted(set(mapped.names) - want), sorted(want - set(mapped.names))
        raise OptionError(
            f"the Shapley players ({len(want)}) are not the {len(mapped)} players of the "
            f"players map: no value for {missing[:3]}, unknown {extra[:3]} (was the Shapley run "
            "made with this --players-map?)"
        )
    tried = []
    for grouping in ("module", "layer", "kind", "tower"):
        try:
            players = make_players(mods, grouping)
        except OptionError:
            continue
        if set(players.names) == want:
            return players
        tried.append(grouping)
    extra = sorted(want - set(mods))[:3]
    raise OptionError(
        f"the Shapley players ({len(want)}, e.g. {sorted(want)[:3]}) match no grouping of the "
        f"adapter's {len(mods)} modules (tried {', '.join(tried)}); unmatched e.g. {extra}; "
        "a Shapley run made with --players-map needs the same --players-map here"
    )


def keep_count(fraction: float, n: int) -> int:
    """``floor(fraction · n + 0.5)``: the number of players a fraction keeps."""
    return int(math.floor(fraction * n + 0.5))


def _ranked(players: Players, scores: Mapping[str, float], what: str) -> list[int]:
    """Player indices by descending score (ties: player order)."""
    missing = [p for p in players.names if p not in scores]
    if missing:
        raise OptionError(f"{what}: no value for {len(missing)} player(s), e.g. {missing[0]}")
    vals = np.array([float(scores[p]) for p in players.names])
    return [int(i) for i in np.argsort(-vals, kind="stable")]


def select_strategy(
    module_names: Iterable[str],
    strategy: Strategy | str,
    *,
    shapley: Mapping[str, float] | None = None,
    norms: Mapping[str, float] | None = None,
    seed: int = 0,
    players_map: Mapping[str, str] | None = None,
) -> list[str]:
    """The adapter modules ``strategy`` keeps, in tower/layer/kind order.

    ``shapley``: player -> Shapley value (players may be modules, layers, kinds or towers, or
    the players of ``players_map``, ``{regex: player}``; see :func:`resolve_players`);
    ``norms``: module -> ``||ΔW||_F``; ``seed`` for ``random`` when the strategy carries none.
    Raises :class:`OptionError` when the layout lacks what the strategy needs (layer indices,
    kinds) or an input is missing.
    """
    s = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    names = list(module_names)
    if not names:
        raise OptionError("the adapter has no modules")
    keys = _keys(names)
    if s.kind is StrategyKind.all:
        return [k.name for k in keys]
    if s.kind is StrategyKind.none:
        return []
    if s.needs_layers:
        return _by_layers(keys, s.kind)
    if s.kind is StrategyKind.kind:
        return _by_kind(keys, str(s.arg))
    if s.fraction is None:  # unreachable: Strategy.__post_init__ checks it
        raise OptionError(f"strategy {s.name} needs a fraction")
    if s.kind in (StrategyKind.shapley_top, StrategyKind.shapley_bottom):
        if shapley is None:
            raise OptionError(f"strategy {s.name} needs Shapley values (--shapley shapley.csv)")
        players = resolve_players(names, shapley, players_map=players_map)
        vals = {strip_peft_prefix(p): v for p, v in shapley.items()}
        order = _ranked(players, vals, "shapley")
        if s.kind is StrategyKind.shapley_bottom:
            order = order[::-1]
    elif s.kind is StrategyKind.norm_top:
        if norms is None:
            raise OptionError(f"strategy {s.name} needs the adapter's norms")
        players = make_players(names, "module")
        order = _ranked(players, norms, "norm")
    else:
        players = make_players(names, "module")
        rng = np.random.default_rng(seed if s.seed is None else s.seed)
        order = [int(i) for i in rng.permutation(len(players))]
    chosen = set(order[: keep_count(s.fraction, len(players))])
    kept = {m for i in chosen for m in players.members[i]}
    return [k.name for k in keys if k.name in kept]
