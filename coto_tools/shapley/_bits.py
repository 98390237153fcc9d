"""Coalitions as bitmasks: bit ``i`` of the key is set when player ``i`` is in the coalition.

Keys are Python ints, so any number of players works; below 63 players the conversions are
vectorised through ``int64``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from coto_tools.errors import ShapleyError

_FAST_MAX = 62


def full_key(n_players: int) -> int:
    """The key of the grand coalition N."""
    return (1 << n_players) - 1


def matrix_to_keys(coalitions: np.ndarray) -> list[int]:
    """Bool matrix ``(k, n)`` -> ``k`` keys."""
    mat = np.asarray(coalitions)
    if mat.ndim != 2:
        raise ShapleyError(f"coalitions must be a 2-d (k, n_players) matrix, got shape {mat.shape}")
    mat = mat.astype(bool)
    n = mat.shape[1]
    if n <= _FAST_MAX:
        weights = np.left_shift(np.int64(1), np.arange(n, dtype=np.int64))
        return [int(x) for x in mat.astype(np.int64) @ weights]
    packed = np.packbits(mat, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def keys_to_matrix(keys: Sequence[int], n_players: int) -> np.ndarray:
    """``k`` keys -> bool matrix ``(k, n_players)``."""
    if n_players <= _FAST_MAX:
        arr = np.asarray(list(keys), dtype=np.int64).reshape(-1, 1)
        return ((arr >> np.arange(n_players, dtype=np.int64)) & 1).astype(bool)
    n_bytes = (n_players + 7) // 8
    raw = b"".join(int(k).to_bytes(n_bytes, "little") for k in keys)
    packed = np.frombuffer(raw, dtype=np.uint8).reshape(len(keys), n_bytes)
    return np.unpackbits(packed, axis=1, bitorder="little")[:, :n_players].astype(bool)


def key_to_string(key: int, n_players: int) -> str:
    """Key -> ``"0101..."`` where character ``i`` is player ``i`` (``"1"`` = present)."""
    return "".join("1" if (key >> i) & 1 else "0" for i in range(n_players))


def string_to_key(text: str, n_players: int) -> int:
    """Inverse of :func:`key_to_string`; refuses strings of the wrong length or alphabet."""
    if len(text) != n_players or set(text) - {"0", "1"}:
        raise ShapleyError(
            f"coalition {text!r}: expected a string of {n_players} characters '0'/'1'"
        )
    return int(text[::-1], 2) if text else 0


def prefix_keys(order: Iterable[int]) -> list[int]:
    """Keys of the growing coalitions along a permutation: {o0}, {o0, o1}, ..., N."""
    keys = []
    acc = 0
    for player in order:
        acc |= 1 << int(player)
        keys.append(acc)
    return keys
