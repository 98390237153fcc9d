"""Games, and the cache that makes every coalition cost one evaluation at most.

A *game* is any callable ``game(coalitions) -> values`` taking a bool matrix ``(k, n_players)``
(row = coalition, ``True`` = player present; the interface of ``shapiq.Game``) and returning
either an array ``(k,)`` (one metric, stored under the name ``"value"``) or a mapping
``{metric_name: array (k,)}`` (several metrics from one evaluation, e.g. ``logprob``,
``accuracy``, ``loss``).

:class:`CachedGame` wraps a game: coalitions are keyed by bitmask, every metric the game returns
is stored, and a coalition is handed to the game at most once. With an
:class:`~coto_tools.shapley.log.EvaluationLog` every new evaluation is appended to disk, and the
log's previous entries are loaded first (resume).

Order and pieces: a game with an ``evaluation_order(coalitions) -> indices`` method (e.g. the
adapter game, whose evaluator reuses the hidden states of lower layers a configuration shares
with earlier ones) gets each batch of new coalitions in that order, and with ``chunk=`` in
pieces of at most that many coalitions, each logged as soon as it is done (so an interrupted run
loses at most one piece) while the whole batch keeps one prefix-sharing order.
``on_computed(k)`` is called after each piece with the number of coalitions computed in it.

Two counters: ``n_evaluations`` is the number of distinct coalitions the current estimation run
has *used* (the budget counts these, whether the value came from the game, the log, or an
earlier run sharing this cache, so a resumed run takes exactly the decisions of an uninterrupted
one); ``n_computed`` is the number of coalitions the wrapped game actually evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from coto_tools.errors import ShapleyError
from coto_tools.shapley._bits import key_to_string, keys_to_matrix, matrix_to_keys
from coto_tools.shapley.log import EvaluationLog

GameOutput = np.ndarray | Mapping[str, np.ndarray]
Game = Callable[[np.ndarray], GameOutput]
DEFAULT_METRIC = "value"


class CachedGame:
    """Cache a game by coalition bitmask; count unique evaluations; optionally log them.

    Args:
        game: the game (see module docstring); ``None`` for a pure lookup over ``store``/``log``.
        n_players: number of players.
        metric: the metric the estimators use (default: the only metric the game returns).
        log: an open :class:`EvaluationLog`; its entries prefill the cache, new ones are appended.
        store: an existing ``{key: {metric: value}}`` dict to share between caches.
        chunk: most coalitions per call of the game (``None``: each batch in one call).
        on_computed: called with the number of coalitions computed after each call of the game.
    """

    def __init__(
        self,
        game: Game | None,
        n_players: int,
        *,
        metric: str | None = None,
        log: EvaluationLog | None = None,
        store: dict[int, dict[str, float]] | None = None,
        chunk: int | None = None,
        on_computed: Callable[[int], None] | None = None,
    ) -> None:
        if not isinstance(n_players, int) or n_players < 1:
            raise ShapleyError(f"n_players must be a positive int, got {n_players!r}")
        if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
            raise ShapleyError(f"chunk must be a positive int or None, got {chunk!r}")
        self.chunk = chunk
        self.on_computed = on_computed
        self.game = game
        self.n_players = n_players
        self.metric = metric
        self.log = log
        self.store: dict[int, dict[str, float]] = {} if store is None else store
        if log is not None:
            if log.n_players != n_players:
                raise ShapleyError(
                    f"{log.path}: log has {log.n_players} players, the game has {n_players}"
                )
            for key, values in log.entries.items():
                self.store.setdefault(key, values)
        self.used: set[int] = set()
        self.n_computed = 0
        self.n_calls = 0

    # -- counters ----------------------------------------------------------------------------
    @property
    def n_evaluations(self) -> int:
        """Distinct coalitions used since the last :meth:`begin_run`."""
        return len(self.used)

    def begin_run(self) -> None:
        """Start counting a new estimation run (the stored values are kept)."""
        self.used = set()

    def metrics(self) -> list[str]:
        """Metric names present in the cache."""
        names: set[str] = set()
        for values in self.store.values():
            names.update(values)
        return sorted(names)

    def primary_metric(self) -> str:
        """The metric the estimators use (resolved from the stored values if not given)."""
        if self.metric is not None:
            return self.metric
        if not self.store:
            return DEFAULT_METRIC
        return self._primary(next(iter(self.store.values())))

    def _primary(self, values: Mapping[str, float]) -> str:
        if self.metric is not None:
            return self.metric
        if len(values) == 1:
            return next(iter(values))
        raise ShapleyError(
            f"the game returns several metrics {sorted(values)}; choose one with metric="
        )

    # -- evaluation --------------------------------------------------------------------------
    def _compute(self, keys: list[int]) -> None:
        if self.game is None:
            shown = ", ".join(key_to_string(k, self.n_players) for k in keys[:3])
            raise ShapleyError(
                f"coalition(s) {shown} were never evaluated: this lookup game only holds the "
                f"{len(self.store)} cached coalitions (recompute needs the same seed and samples)"
            )
        order = getattr(self.game, "evaluation_order", None)
        if callable(order) and len(keys) > 1:
            idx = np.asarray(order(keys_to_matrix(keys, self.n_players)), dtype=np.int64)
            if sorted(idx.tolist()) != list(range(len(keys))):
                raise ShapleyError(
                    "the game's evaluation_order() did not return a permutation of the batch"
                )
            keys = [keys[i] for i in idx]
        step = len(keys) if self.chunk is None else self.chunk
        for start in range(0, len(keys), step):
            piece = keys[start : start + step]
            self._compute_piece(self.game, piece)
            if self.on_computed is not None:
                self.on_computed(len(piece))

    def _compute_piece(self, game: Game, keys: list[int]) -> None:
        out = game(keys_to_matrix(keys, self.n_players))
        self.n_calls += 1
        if isinstance(out, Mapping):
            columns = {
                str(name): _as_column(arr, len(keys), str(name)) for name, arr in out.items()
            }
            if not columns:
                raise ShapleyError("the game returned an empty metric mapping")
        else:
            columns = {DEFAULT_METRIC: _as_column(out, len(keys), DEFAULT_METRIC)}
        for row, key in enumerate(keys):
            record = {name: float(col[row]) for name, col in columns.items()}
            primary = self._primary(record)
            if primary not in record:
                raise ShapleyError(
                    f"metric {primary!r} not returned by the game; got {sorted(record)}"
                )
            if not np.isfinite(record[primary]):
                raise ShapleyError(
                    f"game value {record[primary]} for coalition "
                    f"{key_to_string(key, self.n_players)} (metric {primary!r}) is not finite"
                )
            self.store[key] = record
            self.n_computed += 1
            if self.log is not None:
                self.log.append(key, record)

    def values(self, keys: Sequence[int]) -> np.ndarray:
        """Primary-metric values ``(len(keys),)``; missing coalitions are computed in one call."""
        missing = list(dict.fromkeys(k for k in keys if k not in self.store))
        if missing:
            self._compute(missing)
        self.used.update(keys)
        out = np.empty(len(keys), dtype=np.float64)
        for i, key in enumerate(keys):
            record = self.store[key]
            name = self._primary(record)
            try:
                out[i] = record[name]
            except KeyError:
                raise ShapleyError(
                    f"metric {name!r} missing for coalition {key_to_string(key, self.n_players)} "
                    f"(stored metrics: {sorted(record)})"
                ) from None
        return out

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        """The game interface: bool matrix ``(k, n_players)`` -> ``(k,)``."""
        mat = np.asarray(coalitions)
        if mat.ndim == 1:
            mat = mat.reshape(1, -1)
        if mat.shape[1] != self.n_players:
            raise ShapleyError(
                f"coalition matrix has {mat.shape[1]} columns; "
                f"the game has {self.n_players} players"
            )
        return self.values(matrix_to_keys(mat))

    def lookup(self, metric: str) -> CachedGame:
        """A game answering only from this cache, for ``metric``; unseen coalitions raise."""
        if metric not in self.metrics():
            raise ShapleyError(f"metric {metric!r} not in the cache; available: {self.metrics()}")
        return CachedGame(None, self.n_players, metric=metric, store=self.store)


def _as_column(arr: object, k: int, name: str) -> np.ndarray:
    col = np.asarray(arr, dtype=np.float64)
    if col.size != k or col.ndim > 2:
        raise ShapleyError(
            f"game metric {name!r} returned shape {col.shape}; expected ({k},) for {k} coalitions"
        )
    return col.reshape(k)
