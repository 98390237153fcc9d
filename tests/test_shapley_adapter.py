"""The adapter Shapley game on the tiny task: values, efficiency, estimator agreement, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from coto_tools.adapters.players import make_players
from coto_tools.errors import OptionError, ShapleyError
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.runtime.gated import inject
from coto_tools.shapley import estimate_shapley, recompute
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.game_adapter import AdapterGame
from coto_tools.shapley.run import LOG_FILE, ShapleyConfig, group_log_paths, shapley_run
from coto_tools.tasks import metrics_from_logits
from coto_tools.train import TrainConfig, load_run, train

METRICS = ("logprob", "accuracy", "loss")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-task run directory from the real trainer (a few steps at a high lr)."""
    out = tmp_path_factory.mktemp("shapley_ckpt") / "run"
    result = train(TrainConfig(task="tiny", steps=12, lr=2e-2, seed=1), progress=False)
    result.save(out)
    return out


def _direct_metrics(task, adapter, active: list[str], split: str = "eval"):  # type: ignore[no-untyped-def]
    """Metrics with ``active`` modules on, computed without the evaluator (plain forwards)."""
    model = task.build_model()
    if active:
        inject(model, adapter.subset(active))
    with torch.inference_mode():
        batches = task.batches(split)
        logits = torch.cat([task.logits(model, b) for b in batches])
    return metrics_from_logits(logits, torch.cat([b.labels for b in batches]))


def test_game_values_match_direct_forwards(ckpt: Path) -> None:
    adapter, task, _ = load_run(ckpt)
    players = make_players(adapter.modules, "layer")
    ev = Evaluator(task, adapter, split="eval")
    game = AdapterGame(ev, players)
    mat = np.array([[False, False], [True, False], [False, True], [True, True]])
    out = game(mat)
    assert set(out) == set(METRICS)
    for row, mask in enumerate(mat):
        direct = _direct_metrics(task, adapter, players.active_modules(mask))
        for m in METRICS:
            assert out[m][row] == pytest.approx(direct.get(m), abs=1e-5), (mask, m)
    assert game.n_evaluated == 4
    ev.close()


def test_layer_players_exact_efficiency_for_every_metric(ckpt: Path) -> None:
    adapter, task, _ = load_run(ckpt)
    players = make_players(adapter.modules, "layer")
    assert len(players) == 2
    ev = Evaluator(task, adapter, split="eval")
    cached = CachedGame(AdapterGame(ev, players), len(players), metric="logprob")
    res = estimate_shapley(cached, len(players), estimator="exact")
    full = _direct_metrics(task, adapter, list(adapter.modules))
    empty = _direct_metrics(task, adapter, [])
    assert res.v_full == pytest.approx(full.logprob, abs=1e-5)
    assert res.v_empty == pytest.approx(empty.logprob, abs=1e-5)
    assert abs(res.v_full - res.v_empty) > 1e-3  # the trained adapter does something
    for m in METRICS:
        r = res if m == "logprob" else recompute(res, cached, m)
        assert r.values.sum() == pytest.approx(r.v_full - r.v_empty, abs=1e-10)
    # 2 players by hand: phi_0 = (v(10) - v(00) + v(11) - v(01)) / 2
    v = {k: cached.store[k]["logprob"] for k in range(4)}
    assert res.values[0] == pytest.approx((v[1] - v[0] + v[3] - v[2]) / 2, abs=1e-12)
    ev.close()


def test_module_exact_and_permutation_agree_within_standard_errors(ckpt: Path) -> None:
    adapter, task, _ = load_run(ckpt)
    players = make_players(adapter.modules, "module")
    n = len(players)
    ev = Evaluator(task, adapter, split="eval")
    cached = CachedGame(AdapterGame(ev, players), n, metric="logprob")
    exact = estimate_shapley(cached, n, estimator="exact")
    perm = estimate_shapley(cached, n, estimator="permutation", permutations=300, seed=3)
    assert perm.computed == 0  # every coalition was already cached by the exact run
    z = np.abs(perm.values - exact.values) / perm.std_errors
    assert np.all(perm.std_errors > 0)
    assert np.all(z < 4.0), z
    assert np.abs(perm.values - exact.values).max() < 0.5 * np.abs(exact.values).max()
    ev.close()


def test_game_rejects_unknown_metric_and_foreign_modules(ckpt: Path) -> None:
    adapter, task, _ = load_run(ckpt)
    ev = Evaluator(task, adapter.subset(list(adapter.modules)[:2]), split="quick")
    with pytest.raises(ShapleyError, match="metric"):
        AdapterGame(ev, make_players(list(adapter.modules)[:2]), metrics=("f1",))
    with pytest.raises(ShapleyError, match="not in adapter"):
        AdapterGame(ev, make_players(adapter.modules, "module"))
    ev.close()


def test_config_validation() -> None:
    with pytest.raises(OptionError, match="budget"):
        ShapleyConfig(budget=1)
    with pytest.raises(OptionError, match="players"):
        ShapleyConfig(players="head")  # type: ignore[arg-type]


# -- resume ----------------------------------------------------------------------------------
RESUME_CFG = dict(estimator="permutation", budget=40, seed=5, batch_size=4, split="quick")


class Counting:
    """Records every coalition AdapterGame really hands to the evaluator."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[int] = []
        original = AdapterGame.__call__

        def call(game: AdapterGame, coalitions: np.ndarray):  # type: ignore[no-untyped-def]
            weights = 1 << np.arange(coalitions.shape[1])
            self.keys += [int(k) for k in np.asarray(coalitions, dtype=np.int64) @ weights]
            return original(game, coalitions)

        monkeypatch.setattr(AdapterGame, "__call__", call)


def _log_keys(path: Path) -> list[str]:
    lines = path.read_text().splitlines()[1:]
    return [json.loads(line)["coalition"] for line in lines if line.strip()]


def _assert_same_results(a, b) -> None:  # type: ignore[no-untyped-def]
    for m in METRICS:
        ra, rb = a.results[m], b.results[m]
        assert np.array_equal(ra.values, rb.values), m
        assert np.array_equal(ra.std_errors, rb.std_errors, equal_nan=True), m
        assert ra.evaluations == rb.evaluations


def test_resume_from_truncated_log_evaluates_nothing_twice(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = shapley_run(ckpt, ShapleyConfig(out=tmp_path / "full", **RESUME_CFG))
    total = full.primary.evaluations
    assert full.summary["evaluations_computed"] == total and 30 <= total <= 40
    lines = (tmp_path / "full" / LOG_FILE).read_text().splitlines(keepends=True)
    kept = 1 + 17  # header + 17 coalitions, then a line cut mid-way (as by kill -9)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / LOG_FILE).write_text("".join(lines[:kept]) + lines[kept][:20])
    counting = Counting(monkeypatch)
    resumed = shapley_run(ckpt, ShapleyConfig(out=tmp_path / "cut", **RESUME_CFG))
    logged_before = {int(c[::-1], 2) for c in _log_keys(tmp_path / "full" / LOG_FILE)[:17]}
    assert len(counting.keys) == total - 17
    assert not set(counting.keys) & logged_before
    assert resumed.summary["evaluations_from_log"] == 17
    _assert_same_results(full, resumed)
    keys = _log_keys(tmp_path / "cut" / LOG_FILE)
    assert len(keys) == len(set(keys)) == total


_CHILD = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from coto_tools.shapley.game_adapter import AdapterGame
from coto_tools.shapley.run import ShapleyConfig, shapley_run
original = AdapterGame.__call__
def slow(game, coalitions):
    out = original(game, coalitions)
    time.sleep(0.4)  # slow the game down so the parent can kill us mid-run
    return out
AdapterGame.__call__ = slow
shapley_run(sys.argv[1], ShapleyConfig(out=sys.argv[2], **eval(sys.argv[4])))
"""

# the same run sampled in 4 groups of the quick split's documents (8 each): one log per group
GROUPED_CFG = dict(estimator="stratified", budget=60, seed=2, batch_size=4, split="quick",
                   document_groups=4)  # fmt: skip


@pytest.mark.parametrize("groups", [1, 4], ids=["whole-split", "document-groups"])
def test_resume_after_sigkill(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, groups: int
) -> None:
    cfg = RESUME_CFG if groups == 1 else GROUPED_CFG
    out = tmp_path / "killed"
    logs = [out / LOG_FILE] if groups == 1 else group_log_paths(out, groups)

    def logged() -> list[list[str]]:
        return [_log_keys(p) if p.exists() else [] for p in logs]

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = [sys.executable, "-c", _CHILD, str(ckpt), str(out), str(torch.get_num_threads()),
            repr(cfg)]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(map(len, logged())) >= 10:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = logged()
    n_before = sum(map(len, before))
    assert 10 <= n_before < 30
    assert not (out / "shapley.json").exists()  # killed before any output was written
    counting = Counting(monkeypatch)
    resumed = shapley_run(ckpt, ShapleyConfig(out=out, **cfg))  # type: ignore[arg-type]
    if groups == 1:
        assert not set(counting.keys) & {int(c[::-1], 2) for c in before[0]}
    # nothing logged was evaluated again: each log holds every coalition once
    assert all(len(keys) == len(set(keys)) for keys in logged())
    n_resumed = len(counting.keys)
    reference = shapley_run(ckpt, ShapleyConfig(out=tmp_path / "reference", **cfg))  # type: ignore[arg-type]
    total = (
        reference.primary.evaluations
        if groups == 1
        else reference.summary["document_groups"]["group_evaluations"]
    )
    assert n_resumed == total - n_before
    _assert_same_results(reference, resumed)
    shutil.rmtree(tmp_path / "reference")
