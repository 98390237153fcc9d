"""Games with known Shapley values (for tests and benchmarks), and a lookup-table game.

Every game is a callable ``game(coalitions: bool (k, n)) -> (k,)`` with ``n_players`` and a
closed-form ``shapley_values() -> (n,)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from coto_tools.errors import ShapleyError
from coto_tools.shapley._bits import keys_to_matrix, matrix_to_keys
from coto_tools.shapley.exact import EXACT_MAX_PLAYERS, shapley_from_table


def _matrix(coalitions: np.ndarray, n: int) -> np.ndarray:
    mat = np.asarray(coalitions, dtype=bool)
    if mat.ndim == 1:  # a single coalition (shapiq sometimes passes one as a vector)
        mat = mat.reshape(1, -1)
    if mat.ndim != 2 or mat.shape[1] != n:
        raise ShapleyError(f"expected a (k, {n}) coalition matrix, got shape {mat.shape}")
    return mat


class AdditiveGame:
    """``v(S) = baseline + sum_{i in S} w_i``; ``phi = w`` (zero weight = null player)."""

    def __init__(self, weights: Sequence[float], baseline: float = 0.0) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.baseline = float(baseline)
        self.n_players = int(self.weights.size)

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        return self.baseline + _matrix(coalitions, self.n_players) @ self.weights

    def shapley_values(self) -> np.ndarray:
        return self.weights.copy()


class UnanimityGame:
    """Sum of scaled unanimity games ``v(S) = sum_T c_T [T subset of S]``.

    ``phi_i = sum_{T containing i} c_T / |T|`` (each carrier's worth split equally).
    """

    def __init__(self, n_players: int, carriers: Sequence[tuple[Sequence[int], float]]) -> None:
        self.n_players = n_players
        self.carriers = []
        for members, weight in carriers:
            idx = np.array(sorted(set(int(i) for i in members)), dtype=np.int64)
            if idx.size == 0 or idx.min() < 0 or idx.max() >= n_players:
                raise ShapleyError(f"carrier {list(members)} not a non-empty subset of players")
            self.carriers.append((idx, float(weight)))

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        mat = _matrix(coalitions, self.n_players)
        out = np.zeros(mat.shape[0])
        for idx, weight in self.carriers:
            out += weight * mat[:, idx].all(axis=1)
        return out

    def shapley_values(self) -> np.ndarray:
        phi = np.zeros(self.n_players)
        for idx, weight in self.carriers:
            phi[idx] += weight / idx.size
        return phi


class MajorityGame:
    """Symmetric voting game ``v(S) = 1 if |S| >= quota else 0``; ``phi_i = 1 / n``."""

    def __init__(self, n_players: int, quota: int) -> None:
        if not 1 <= quota <= n_players:
            raise ShapleyError(f"quota must be in 1..{n_players}, got {quota}")
        self.n_players = n_players
        self.quota = quota

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        return (_matrix(coalitions, self.n_players).sum(axis=1) >= self.quota).astype(float)

    def shapley_values(self) -> np.ndarray:
        return np.full(self.n_players, 1.0 / self.n_players)


class AirportGame:
    """Airport game (Littlechild & Owen 1973): ``v(S) = max_{i in S} c_i`` (``v(empty) = 0``).

    With costs sorted ``c_(1) <= ... <= c_(n)``, player ``(k)`` pays
    ``sum_{j <= k} (c_(j) - c_(j-1)) / (n - j + 1)``.
    """

    def __init__(self, costs: Sequence[float]) -> None:
        self.costs = np.asarray(costs, dtype=np.float64)
        self.n_players = int(self.costs.size)

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        mat = _matrix(coalitions, self.n_players)
        return np.where(mat, self.costs, 0.0).max(axis=1, initial=0.0)

    def shapley_values(self) -> np.ndarray:
        order = np.argsort(self.costs, kind="stable")
        sorted_c = self.costs[order]
        steps = np.diff(np.concatenate(([0.0], sorted_c)))
        shares = np.cumsum(steps / (self.n_players - np.arange(self.n_players)))
        phi = np.empty(self.n_players)
        phi[order] = shares
        return phi


class SumGame:
    """``v = sum of games`` on the same players; Shapley values add (additivity axiom)."""

    def __init__(self, *games: object) -> None:
        self.games = games
        self.n_players = int(games[0].n_players)  # type: ignore[attr-defined]

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        return np.sum([g(coalitions) for g in self.games], axis=0)  # type: ignore[operator]

    def shapley_values(self) -> np.ndarray:
        return np.sum([g.shapley_values() for g in self.games], axis=0)  # type: ignore[attr-defined]


class WithNullPlayers:
    """Adds ``n_null`` players (the last ones) that never change the value; their phi is 0."""

    def __init__(self, game: object, n_null: int) -> None:
        self.game = game
        self.inner = int(game.n_players)  # type: ignore[attr-defined]
        self.n_players = self.inner + n_null

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        return self.game(_matrix(coalitions, self.n_players)[:, : self.inner])  # type: ignore[operator]

    def shapley_values(self) -> np.ndarray:
        phi = np.zeros(self.n_players)
        phi[: self.inner] = self.game.shapley_values()  # type: ignore[attr-defined]
        return phi


class TableGame:
    """Values looked up from a table of ``2^n`` entries indexed by coalition bitmask
    (bit ``i`` = player ``i``). ``values`` is one array or ``{metric: array}`` (multi-metric).

    File formats (:meth:`load`): ``.npy`` (one array, players named ``p0..``) or ``.json``
    ``{"player_names": [...], "values": [...] or {"metric": [...], ...}}``.
    """

    def __init__(
        self,
        values: np.ndarray | Mapping[str, np.ndarray],
        player_names: Sequence[str] | None = None,
        *,
        metric: str | None = None,
    ) -> None:
        tables = dict(values) if isinstance(values, Mapping) else {"value": values}
        self.tables = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in tables.items()}
        sizes = {v.size for v in self.tables.values()}
        size = sizes.pop()
        n = int(round(np.log2(size))) if size > 0 else -1
        if sizes or n < 1 or size != 1 << n:
            raise ShapleyError(f"table sizes {sorted({size, *sizes})}: need 2^n entries, n >= 1")
        self.n_players = n
        self.player_names = (
            tuple(player_names) if player_names else tuple(f"p{i}" for i in range(n))
        )
        if len(self.player_names) != n:
            raise ShapleyError(f"{len(self.player_names)} player names for {n} players")
        self.metric = metric or next(iter(self.tables))
        if self.metric not in self.tables:
            raise ShapleyError(f"metric {self.metric!r} not in table ({sorted(self.tables)})")
        self.multi = isinstance(values, Mapping) and metric is None

    def __call__(self, coalitions: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        keys = np.asarray(matrix_to_keys(_matrix(coalitions, self.n_players)), dtype=np.int64)
        if self.multi:
            return {k: v[keys] for k, v in self.tables.items()}
        return self.tables[self.metric][keys]

    def shapley_values(self, metric: str | None = None) -> np.ndarray:
        """Exact values from the table (``n <= 16``)."""
        if self.n_players > EXACT_MAX_PLAYERS:
            raise ShapleyError(f"table of {self.n_players} players: exact limited to 16")
        return shapley_from_table(self.tables[metric or self.metric])

    @classmethod
    def from_game(cls, game: object, n_players: int, **kw: object) -> TableGame:
        """Tabulate any single-metric game on ``n_players <= 16``."""
        if n_players > EXACT_MAX_PLAYERS:
            raise ShapleyError(f"cannot tabulate {n_players} players (limit 16)")
        mat = keys_to_matrix(range(1 << n_players), n_players)
        return cls(np.asarray(game(mat), dtype=np.float64), **kw)  # type: ignore[operator, arg-type]

    @classmethod
    def load(cls, path: str | Path, *, metric: str | None = None) -> TableGame:
        """Read a ``.npy`` or ``.json`` table (never unpickles)."""
        path = Path(path)
        if not path.is_file():
            raise ShapleyError(f"{path}: table file not found")
        if path.suffix == ".npy":
            return cls(np.load(path, allow_pickle=False), metric=metric)
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                return cls(data["values"], data.get("player_names"), metric=metric)
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise ShapleyError(f"{path}: not a table JSON ({exc})") from exc
        raise ShapleyError(f"{path}: table must be .npy or .json, got {path.suffix!r}")


def redundant_adapter_game(n_players: int = 12, seed: int = 0) -> TableGame:
    """A synthetic but realistic stand-in for adapter Shapley games (tabulated, ``n <= 16``).

    ``v(S) = sat(sum_{i in S} w_i) + sum_T c_T [T subset of S]`` with skewed positive weights
    ``w`` (a few strong adapters), ``sat(x) = x_max * (1 - exp(-2 x / x_max))`` (redundancy:
    diminishing returns once enough adapters are on), and a few random pairwise / triple
    unanimity terms of either sign (synergies and conflicts). No closed form; exact values come
    from the table.
    """
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(mean=0.0, sigma=1.0, size=n_players)
    total = weights.sum()
    carriers = [
        (rng.choice(n_players, size=int(rng.integers(2, 4)), replace=False), rng.normal(0, 0.15))
        for _ in range(max(2, n_players // 2))
    ]
    unanimity = UnanimityGame(
        n_players, [(list(m), float(c) * total / n_players) for m, c in carriers]
    )
    mat = keys_to_matrix(range(1 << n_players), n_players)
    score = mat @ weights
    values = total * (1.0 - np.exp(-2.0 * score / total)) + unanimity(mat)
    return TableGame(values, tuple(f"a{i}" for i in range(n_players)))
