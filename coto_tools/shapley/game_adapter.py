"""The adapter Shapley game: ``v(S)`` = the task metrics with only the adapters of players ``S`` on.

:class:`AdapterGame` turns an :class:`~coto_tools.runtime.evaluator.Evaluator` and a
:class:`~coto_tools.adapters.players.Players` grouping into a game in the estimators' interface
(a bool coalition matrix ``(k, n_players)`` -> ``{metric: (k,)}``): every metric is returned for
every coalition, so one set of evaluations serves all metrics (see
:func:`coto_tools.shapley.recompute`). The evaluator sorts each batch so that neighbouring
configurations share their lower layers (prefix reuse), and caches by configuration.

:func:`game_fingerprint` identifies a game for :class:`~coto_tools.shapley.EvaluationLog`: the
adapter weights' hash and scalings (config), the task, its options and the content of the files
it reads (data, plugin, local base model), the split, the players and the metrics with their
definitions, so a log is never resumed against a different game.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from coto_tools.adapters.players import Players
from coto_tools.errors import ShapleyError
from coto_tools.tasks.base import METRIC_NAMES, Metrics

DEFAULT_ADAPTER = "default"


class SupportsValueBatch(Protocol):
    """What :class:`AdapterGame` needs from an evaluator."""

    def value_batch(self, configs: Sequence[Mapping[Any, float]]) -> list[Metrics]: ...


class AdapterGame:
    """``v(S)``: metrics of the model with exactly the modules of players ``S`` switched on.

    Args:
        evaluator: an :class:`~coto_tools.runtime.evaluator.Evaluator` holding the adapter
            (branch name ``adapter``); modules of the adapter that belong to no player stay off.
        players: the players; every member module must be a module of the adapter.
        metrics: the metric names returned for each coalition (default: logprob, accuracy, loss).
        adapter: the evaluator's branch name of the adapter.

    ``n_evaluated`` counts the coalitions handed to the evaluator (one per row of every call);
    the evaluator's own ``n_forward`` counts real forward passes.
    """

    def __init__(
        self,
        evaluator: SupportsValueBatch,
        players: Players,
        *,
        metrics: Sequence[str] = METRIC_NAMES,
        adapter: str = DEFAULT_ADAPTER,
    ) -> None:
        bad = [m for m in metrics if m not in METRIC_NAMES]
        if bad or not metrics:
            raise ShapleyError(
                f"unknown metric(s) {bad or metrics!r}; allowed: {', '.join(METRIC_NAMES)}"
            )
        self.evaluator = evaluator
        self.players = players
        self.metrics = tuple(dict.fromkeys(metrics))
        self.adapter = adapter
        known = _adapter_modules(evaluator, adapter)
        if known is not None:
            missing = [m for m in players.modules if m not in known]
            if missing:
                raise ShapleyError(
                    f"player module(s) {missing[:3]} are not in adapter {adapter!r} "
                    f"({len(known)} modules)"
                )
        self.n_evaluated = 0
        self.n_calls = 0

    @property
    def n_players(self) -> int:
        return len(self.players)

    def config(self, mask: Sequence[bool] | np.ndarray) -> dict[tuple[str, str], float]:
        """The evaluator configuration of one coalition: player modules on (1.0) or off (0.0)."""
        return {(self.adapter, m): g for m, g in self.players.gates(mask).items()}

    def evaluation_order(self, coalitions: np.ndarray) -> np.ndarray:
        """Row indices of ``coalitions`` in the evaluator's prefix-sharing order (its canonical
        configuration keys sorted, lowest layers first; input order when the evaluator has no
        ``key``). :class:`~coto_tools.shapley.cache.CachedGame` evaluates a batch in this order,
        so pieces of it sent to the evaluator one after another walk one prefix tree."""
        mat = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        key = getattr(self.evaluator, "key", None)
        if not callable(key):
            return np.arange(len(mat))
        keys = [key(self.config(row)) for row in mat]
        return np.array(sorted(range(len(mat)), key=keys.__getitem__), dtype=np.int64)

    def __call__(self, coalitions: np.ndarray) -> dict[str, np.ndarray]:
        """``coalitions``: bool ``(k, n_players)`` -> ``{metric: (k,)}`` (float64)."""
        mat = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        if mat.ndim != 2 or mat.shape[1] != self.n_players:
            raise ShapleyError(
                f"coalition matrix of shape {mat.shape}; the game has {self.n_players} players"
            )
        results = self.evaluator.value_batch([self.config(row) for row in mat])
        self.n_calls += 1
        self.n_evaluated += mat.shape[0]
        return {
            name: np.array([r.get(name) for r in results], dtype=np.float64)
            for name in self.metrics
        }


def _adapter_modules(evaluator: object, adapter: str) -> set[str] | None:
    adapters = getattr(evaluator, "adapters", None)
    if not isinstance(adapters, Mapping):
        return None
    if adapter not in adapters:
        raise ShapleyError(f"evaluator has no adapter {adapter!r}; it has {sorted(adapters)}")
    return set(adapters[adapter].modules)


def weights_hash(path: str | Path) -> str:
    """SHA-256 of a checkpoint's weight file(s) (``*.safetensors`` in a dir, or the file)."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise ShapleyError(f"{path}: no .safetensors weights to fingerprint")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


METRIC_DEFINITIONS = (
    "v1: logprob = mean log-probability of the gold label; accuracy = mean of argmax == label; "
    "loss = mean cross-entropy (language models: per-token sums)"
)
"""Recorded in every fingerprint: change it when a metric's definition changes, so that logs of
the old definition are not resumed."""

_FULL_HASH_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20


def _hash_file(h: Any, f: Path) -> None:
    size = f.stat().st_size
    h.update(f"{f.name}\0{size}\0".encode())
    with f.open("rb") as fh:
        if size <= _FULL_HASH_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:  # a large weight file: its size, first and last MiB identify it
            h.update(fh.read(_EDGE_BYTES))
            fh.seek(size - _EDGE_BYTES)
            h.update(fh.read(_EDGE_BYTES))


def content_digest(path: str | Path) -> str:
    """SHA-256 identifying the content of an input file or folder (a data file, a plugin, a
    local base model): files up to 64 MiB are hashed whole, larger ones by their size and
    their first and last MiB (an in-place edit in the middle of a larger file that keeps its
    size is not seen); a folder by its visible files, recursively, in name order."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if f.is_file() and not any(part.startswith(".") for part in rel.parts):
                    h.update(str(rel).encode() + b"\0")
                    _hash_file(h, f)
        elif p.is_file():
            _hash_file(h, p)
        else:
            h.update(b"<missing>")
    except OSError as exc:
        raise ShapleyError(f"{p}: cannot read to fingerprint it: {exc.strerror or exc}") from exc
    return h.hexdigest()


def adapter_scalings(adapter: Any) -> dict[str, list[Any]]:
    """``{module: [rank, alpha, use_rslora]}``: what the adapter config decides (``lora_alpha``,
    ``alpha_pattern``, ``rank_pattern``, ``use_rslora``) beyond the weights."""
    return {
        n: [int(m.rank), float(m.alpha), bool(m.use_rslora)]
        for n, m in sorted(adapter.modules.items())
    }


def game_fingerprint(
    *,
    weights: str,
    task: str,
    task_variant: Mapping[str, Any],
    split: str,
    players: Players,
    metrics: Sequence[str],
    scalings: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    dtype: str = "float32",
    identity: Mapping[str, Any] | None = None,
) -> str:
    """A short stable id of an adapter game: everything that changes a value. The task's
    ``identity`` (:meth:`~coto_tools.tasks.base.Task.identity`: labels, prompt texts), the adapter
    weights' hash and ``scalings`` (:func:`adapter_scalings`: the config's alphas, ranks,
    rsLoRA), the task and its options, ``inputs`` (``{path: content_digest}`` of the data,
    plugin and local base model the task reads), the split, the players, the metrics,
    :data:`METRIC_DEFINITIONS` and the model's ``dtype`` (left out for float32, so float32 logs
    keep their fingerprint)."""
    spec = {
        "weights_sha256": weights,
        "scalings": dict(scalings or {}),
        "task": task,
        "task_variant": dict(task_variant),
        "task_identity": dict(identity or {}),
        "inputs_sha256": dict(sorted((inputs or {}).items())),
        "split": split,
        "grouping": players.grouping,
        "players": [[n, list(m)] for n, m in zip(players.names, players.members, strict=True)],
        "metrics": sorted(metrics),
        "metric_definitions": METRIC_DEFINITIONS,
    }
    if dtype != "float32":
        spec["dtype"] = dtype
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return f"adapter-game:{hashlib.sha256(blob).hexdigest()[:32]}"
