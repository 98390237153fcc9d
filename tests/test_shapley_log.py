"""Evaluation log: resume after a crash / truncated line gives an uninterrupted run's numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coto_tools.errors import ShapleyError
from coto_tools.shapley import CachedGame, EvaluationLog, estimate_shapley, redundant_adapter_game
from coto_tools.shapley._bits import matrix_to_keys

N = 9


class Crash(RuntimeError):
    pass


class FlakyGame:
    """Multi-metric game that records its calls and crashes after ``crash_after`` coalitions."""

    def __init__(self, crash_after: int | None = None):
        self.base = redundant_adapter_game(N, seed=6)
        self.crash_after = crash_after
        self.seen: list[int] = []

    def __call__(self, coalitions):
        keys = matrix_to_keys(coalitions)
        if self.crash_after is not None and len(self.seen) + len(keys) > self.crash_after:
            raise Crash("killed")
        self.seen.extend(keys)
        v = self.base(coalitions)
        return {"logprob": v, "accuracy": (v > 5.0).astype(float)}


def run(game, path, estimator, fingerprint="game-A"):
    with EvaluationLog(path, fingerprint, N) as log:
        cached = CachedGame(game, N, metric="logprob", log=log)
        return estimate_shapley(cached, N, estimator=estimator, budget=150, seed=4, batch_size=16)


def test_log_roundtrip_and_header(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    with EvaluationLog(path, "fp", 3) as log:
        log.append(0b101, {"a": 1.5, "b": -2.0})
        log.append(0, {"a": 0.0, "b": 0.25})
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["fingerprint"] == "fp"
    assert json.loads(lines[1]) == {"coalition": "101", "values": {"a": 1.5, "b": -2.0}}
    with EvaluationLog(path, "fp", 3) as again:
        assert again.entries == {0b101: {"a": 1.5, "b": -2.0}, 0: {"a": 0.0, "b": 0.25}}


def test_truncated_last_line_is_dropped_and_cut(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    with EvaluationLog(path, "fp", 4) as log:
        log.append(3, {"v": 1.0})
    good = path.read_bytes()
    path.write_bytes(good + b'{"coalition": "0110", "val')
    with EvaluationLog(path, "fp", 4) as log:
        assert log.dropped_partial_line and list(log.entries) == [3]
        log.append(6, {"v": 2.0})
    with EvaluationLog(path, "fp", 4) as log:
        assert log.entries == {3: {"v": 1.0}, 6: {"v": 2.0}}


def test_damaged_middle_line_refused(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    with EvaluationLog(path, "fp", 2) as log:
        log.append(1, {"v": 1.0})
        log.append(2, {"v": 2.0})
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ShapleyError, match="line 2"):
        EvaluationLog(path, "fp", 2)


def test_fingerprint_and_player_mismatch_refused(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    EvaluationLog(path, "game-A", 5).close()
    with pytest.raises(ShapleyError, match="game-A"):
        EvaluationLog(path, "game-B", 5)
    with pytest.raises(ShapleyError, match="players"):
        EvaluationLog(path, "game-A", 6)


@pytest.mark.parametrize(
    "estimator", ["permutation", "antithetic", "kernelshap", "svarm", "stratified"]
)
def test_resume_after_crash_equals_uninterrupted(tmp_path, estimator):
    full = run(FlakyGame(), tmp_path / "a.jsonl", estimator)

    path = tmp_path / "b.jsonl"
    crashing = FlakyGame(crash_after=70)
    with pytest.raises(Crash):
        run(crashing, path, estimator)
    with path.open("ab") as fh:  # a kill -9 in the middle of writing a line
        fh.write(b'{"coalition": "0101')
    before = set(crashing.seen)
    assert 0 < len(before) <= 70

    resumed_game = FlakyGame()
    resumed = run(resumed_game, path, estimator)
    assert not before & set(resumed_game.seen)  # nothing evaluated twice
    assert len(before) + len(resumed_game.seen) == full.computed
    assert resumed.computed == len(resumed_game.seen)
    np.testing.assert_array_equal(resumed.values, full.values)
    np.testing.assert_array_equal(resumed.std_errors, full.std_errors)
    assert (resumed.evaluations, resumed.n_samples) == (full.evaluations, full.n_samples)
    with EvaluationLog(path, "game-A", N) as log:
        assert len(log) == full.evaluations


def test_resume_with_other_fingerprint_refused(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    run(FlakyGame(), path, "permutation")
    with pytest.raises(ShapleyError, match="refusing to resume"):
        run(FlakyGame(), path, "permutation", fingerprint="another-adapter")
