"""Batches of coalitions: one evaluation order per sampled batch, evaluated and logged in pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coto_tools.adapters.players import make_players
from coto_tools.errors import ShapleyError
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.shapley import estimate_shapley
from coto_tools.shapley._bits import matrix_to_keys
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.game_adapter import AdapterGame
from coto_tools.shapley.log import EvaluationLog
from coto_tools.shapley.run import LOG_FILE, ShapleyConfig, shapley_run
from coto_tools.train import TrainConfig, load_run, train

WEIGHTS = np.array([0.5, -1.0, 2.0, 0.25, 1.5])


class Recording:
    """Additive game v(S) = sum of WEIGHTS[S]; records the keys of every call, in order."""

    def __init__(self, order: str | None = None) -> None:
        self.calls: list[list[int]] = []
        if order == "reverse":
            self.evaluation_order = lambda mat: np.arange(len(mat))[::-1]
        elif order == "broken":
            self.evaluation_order = lambda mat: np.zeros(len(mat), dtype=np.int64)

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        self.calls.append(matrix_to_keys(coalitions))
        return np.asarray(coalitions, dtype=float) @ WEIGHTS


def test_chunked_calls_log_each_piece_and_equal_one_call(tmp_path: Path) -> None:
    keys = list(range(1, 11))
    whole, pieces = Recording(), Recording()
    done: list[int] = []
    with EvaluationLog(tmp_path / "log.jsonl", "fp", 5) as log:
        cached = CachedGame(pieces, 5, log=log, chunk=3, on_computed=done.append)
        got = cached.values(keys)
        assert len(log) == 10
    want = CachedGame(whole, 5).values(keys)
    assert np.array_equal(got, want)
    assert [len(c) for c in pieces.calls] == [3, 3, 3, 1]
    assert [k for c in pieces.calls for k in c] == keys
    assert done == [3, 3, 3, 1]
    assert len(whole.calls) == 1


def test_evaluation_order_is_followed_across_pieces() -> None:
    game = Recording(order="reverse")
    cached = CachedGame(game, 5, chunk=4)
    values = cached.values([3, 5, 6, 9, 12, 17])
    assert [k for c in game.calls for k in c] == [17, 12, 9, 6, 5, 3]
    # values come back in the caller's order whatever the evaluation order
    want = [sum(WEIGHTS[i] for i in range(5) if k >> i & 1) for k in (3, 5, 6, 9, 12, 17)]
    np.testing.assert_allclose(values, want, rtol=0, atol=1e-12)


def test_an_order_that_is_not_a_permutation_is_refused() -> None:
    with pytest.raises(ShapleyError, match="permutation"):
        CachedGame(Recording(order="broken"), 5).values([1, 2, 3])
    with pytest.raises(ShapleyError, match="chunk"):
        CachedGame(Recording(), 5, chunk=0)


def test_estimates_do_not_depend_on_the_batching() -> None:
    runs = [
        estimate_shapley(
            CachedGame(Recording(), 5, chunk=chunk),
            5,
            estimator="antithetic",
            budget=24,
            seed=3,
            batch_size=batch,
        )
        for batch, chunk in ((4, None), (256, 2), (7, 3))
    ]
    for r in runs[1:]:
        assert np.array_equal(r.values, runs[0].values)
        assert r.evaluations == runs[0].evaluations


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("batches_ckpt") / "run"
    train(TrainConfig(task="tiny", steps=6, lr=2e-2, seed=2), progress=False).save(out)
    return out


def test_adapter_game_order_walks_one_prefix_tree(ckpt: Path) -> None:
    adapter, task, _ = load_run(ckpt)
    players = make_players(adapter.modules, "module")
    rng = np.random.default_rng(0)
    mat = rng.random((24, len(players))) < 0.5
    keys = list(dict.fromkeys(matrix_to_keys(mat)))

    probe = Evaluator(task, adapter, split="quick")
    probe.value({})
    one_state = probe._runner.cache.peak_bytes if probe._runner is not None else 0
    probe.close()
    assert one_state > 0

    def passes(chunk: int, ordered: bool) -> tuple[int, np.ndarray]:
        # room for one cached state: only the previous configuration's prefix is reused
        ev = Evaluator(task, adapter, split="quick", prefix_cache_mb=1.5 * one_state / 2**20)
        game = AdapterGame(ev, players, metrics=("logprob",))
        if not ordered:  # hide the order: each piece is sorted by the evaluator alone
            game.evaluation_order = lambda m: np.arange(len(m))  # type: ignore[method-assign]
        values = CachedGame(game, len(players), chunk=chunk).values(keys)
        n = ev.layer_passes
        ev.close()
        assert n is not None
        return n, values

    one_call, v1 = passes(len(keys), ordered=False)
    ordered, v2 = passes(3, ordered=True)
    unordered, v3 = passes(3, ordered=False)
    assert ordered == one_call < unordered
    assert np.array_equal(v1, v2) and np.array_equal(v1, v3)


def test_run_results_and_log_do_not_depend_on_the_sample_batch(ckpt: Path, tmp_path: Path) -> None:
    common = dict(estimator="antithetic", budget=30, seed=4, split="quick", batch_size=4)
    a = shapley_run(ckpt, ShapleyConfig(out=tmp_path / "a", sample_batch=4, **common))
    b = shapley_run(ckpt, ShapleyConfig(out=tmp_path / "b", sample_batch=256, **common))
    for m in ("logprob", "accuracy", "loss"):
        assert np.array_equal(a.results[m].values, b.results[m].values), m
        assert np.array_equal(a.results[m].std_errors, b.results[m].std_errors, equal_nan=True)
    log_a = (tmp_path / "a" / LOG_FILE).read_text().splitlines()[1:]
    log_b = (tmp_path / "b" / LOG_FILE).read_text().splitlines()[1:]
    assert sorted(log_a) == sorted(log_b) and len(log_a) == a.primary.evaluations
