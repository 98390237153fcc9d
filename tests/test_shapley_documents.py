"""Shapley values with the documents sampled too (:mod:`coto_tools.shapley.documents`).

Games here are made of documents: ``v_d(S)`` per document ``d``, a part common to the documents
(saturation and pairwise terms) and a part of each document's own (a ``tanh`` of its own
weights: third- and higher-order terms that the antithetic pairs do not cancel). The whole
game is the mean over documents; group ``g`` is documents ``g, g + G, ...``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_executor import run_cli

from coto_tools.errors import OptionError, ShapleyError
from coto_tools.shapley import estimate_shapley
from coto_tools.shapley._sampling import SamplingConfig
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.documents import (
    combine_interactions,
    estimate_documents,
    group_seed,
)
from coto_tools.shapley.interactions import estimate_interactions
from coto_tools.shapley.log import EvaluationLog
from coto_tools.shapley.registry import recompute


class DocGame:
    """``n`` players, ``docs`` documents; ``common`` scales the shared part."""

    def __init__(self, n: int, docs: int, seed: int, common: float = 1.0, own: float = 0.4):
        rng = np.random.default_rng(seed)
        self.n, self.docs = n, docs
        self.a = rng.gamma(2.0, 1.0, n)
        self.q = rng.normal(0.0, 0.15, (n, n))
        self.w = rng.normal(0.0, 0.6, (docs, n))
        self.w3 = rng.normal(0.0, 0.5, (n, n))
        self.common, self.own = common, own

    def per_doc(self, mat: np.ndarray) -> np.ndarray:
        """``(k, docs)``, row by row (a row's value must not depend on the batch it comes in:
        matrix products round differently for different shapes)."""
        rows = np.atleast_2d(np.asarray(mat, dtype=float))
        return np.concatenate([self._per_doc(r[None, :]) for r in rows])

    def _per_doc(self, x: np.ndarray) -> np.ndarray:
        shared = np.log1p(x @ self.a) + np.einsum("ki,ij,kj->k", x, self.q, x)
        # a third-order common part (what antithetic pairs leave), as on real adapter games
        shared = shared + 0.3 * np.tanh(np.einsum("ki,ij,kj->k", x, self.w3, x) / self.n)
        return self.common * shared[:, None] + self.own * np.tanh(x @ self.w.T)

    def group(self, idx: np.ndarray):
        return lambda mat: self.per_doc(mat)[:, idx].mean(axis=1)

    def whole(self, mat: np.ndarray) -> np.ndarray:
        return self.per_doc(mat).mean(axis=1)

    def groups(self, g: int) -> list[np.ndarray]:
        return [np.arange(i, self.docs, g) for i in range(g)]


def _run(game: DocGame, g: int, budget: int, seed: int, logs=None):
    idx = game.groups(g)
    caches = [
        CachedGame(game.group(ix), game.n, log=None if logs is None else logs[i])
        for i, ix in enumerate(idx)
    ]
    res = estimate_documents(
        caches, [len(ix) for ix in idx], SamplingConfig(budget=budget, seed=seed)
    )
    return res, caches


def test_exact_identity_efficiency_budget_and_seed() -> None:
    game = DocGame(8, 30, seed=0)
    exact = estimate_shapley(game.whole, 8, estimator="exact").values
    res, caches = _run(game, 5, 120, seed=3)
    c = res.combined
    # efficiency of the whole game, exactly
    v0, v1 = game.whole(np.zeros((1, 8), bool))[0], game.whole(np.ones((1, 8), bool))[0]
    assert abs(c.values.sum() - (v1 - v0)) < 1e-10
    assert abs(c.v_full - v1) < 1e-12 and abs(c.v_empty - v0) < 1e-12
    # the budget counts whole-split evaluations (a group evaluation: 1/5 of one)
    assert res.split_evaluations <= 120 + 1e-9
    assert res.group_evaluations == sum(x.n_evaluations for x in caches)
    assert c.evaluations == int(np.ceil(res.split_evaluations - 1e-9))
    # every group got the same number of pairs, up to one
    pairs = [r.n_samples for r in res.groups]
    assert max(pairs) - min(pairs) <= 1 and c.n_samples == sum(pairs)
    # the running estimates: at the whole-split evaluations spent after each pair
    ev = c.trace.evaluations
    assert np.all(np.diff(ev) >= 0) and len(set(ev.tolist())) > 3 and ev[-1] <= 120
    # same seed, same numbers (whatever the batch size); another seed, other numbers
    again, _ = _run(game, 5, 120, seed=3)
    np.testing.assert_array_equal(again.combined.values, c.values)
    idx = game.groups(5)
    small = estimate_documents(
        [CachedGame(game.group(ix), 8) for ix in idx],
        [len(ix) for ix in idx],
        SamplingConfig(budget=120, seed=3, batch_size=3),
    )
    np.testing.assert_array_equal(small.combined.values, c.values)
    np.testing.assert_array_equal(small.combined.std_errors, c.std_errors)
    other, _ = _run(game, 5, 120, seed=4)
    assert not np.allclose(other.combined.values, c.values)
    # each group's result is a plain stratified run of its own seed: recompute replays it
    for g, (r, cache) in enumerate(zip(res.groups, caches, strict=True)):
        assert r.seed == group_seed(3, g, 5) and r.estimator == "stratified"
        np.testing.assert_array_equal(recompute(r, cache, r.metric).values, r.values)
    # and it is close to the exact values
    assert np.linalg.norm(c.values - exact) / np.linalg.norm(exact) < 0.1


def test_coverage_and_error_against_whole_split() -> None:
    """Calibration of the combined intervals (groups' variances weighted by w_g^2, t with
    the groups' summed degrees of freedom): 95% intervals cover >= 0.93 of the players over 60
    seeds at the default budget. On this game, whose per-document noise is small beside the
    common part (as measured on the real 18-player game, per-document deviations correlated 0.31),
    the grouped run's median error is below the whole-split default's at the same budget in
    whole-split evaluations. Not checked here: games where each document's own part dominates,
    where the grouping gains less."""
    game = DocGame(10, 24, seed=1, common=1.0, own=0.25)
    exact = estimate_shapley(game.whole, 10, estimator="exact").values
    cover, err_g, err_w = [], [], []
    for seed in range(60):
        res, _ = _run(game, 6, 150, seed)
        c = res.combined
        cover.append(np.mean((c.ci_low <= exact) & (exact <= c.ci_high)))
        err_g.append(np.linalg.norm(c.values - exact) / np.linalg.norm(exact))
        w = estimate_shapley(game.whole, 10, estimator="stratified", budget=150, seed=seed)
        err_w.append(np.linalg.norm(w.values - exact) / np.linalg.norm(exact))
    assert np.mean(cover) >= 0.93, np.mean(cover)
    assert np.median(err_g) < np.median(err_w), (np.median(err_g), np.median(err_w))


def test_resume_from_the_groups_logs(tmp_path: Path) -> None:
    game = DocGame(7, 12, seed=2)
    idx = game.groups(3)
    paths = [tmp_path / f"g{i}.jsonl" for i in range(3)]
    full, _ = _run(game, 3, 80, seed=5)

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def failing(ix):
        inner = game.group(ix)

        def f(mat):
            calls["n"] += 1
            if calls["n"] > 4:
                raise Stop
            return inner(mat)

        return f

    logs = [EvaluationLog(p, f"doc-game:{i}", 7) for i, p in enumerate(paths)]
    caches = [CachedGame(failing(ix), 7, log=lg, chunk=8) for ix, lg in zip(idx, logs, strict=True)]
    with pytest.raises(Stop):
        estimate_documents(caches, [4, 4, 4], SamplingConfig(budget=80, seed=5))
    for lg in logs:
        lg.close()
    logged = sum(len(p.read_text().splitlines()) - 1 for p in paths)
    assert logged > 0
    logs = [EvaluationLog(p, f"doc-game:{i}", 7) for i, p in enumerate(paths)]
    res, caches = _run(game, 3, 80, seed=5, logs=logs)
    for lg in logs:
        lg.close()
    np.testing.assert_array_equal(res.combined.values, full.combined.values)
    assert sum(c.n_computed for c in caches) == full.group_evaluations - logged


def test_interactions_combine_linearly() -> None:
    """Faith-Shap indices are linear in the game: the weighted sum of the groups' exact
    indices is the whole game's."""
    game = DocGame(6, 9, seed=3)
    idx = game.groups(3)
    items = []
    for ix in idx:
        cache = CachedGame(game.group(ix), 6)
        items.append(estimate_interactions(estimate_shapley(cache, 6, estimator="exact"), cache))
    whole = CachedGame(game.whole, 6)
    ref = estimate_interactions(estimate_shapley(whole, 6, estimator="exact"), whole)
    got = combine_interactions(items, [3, 3, 3])
    np.testing.assert_allclose(got.pairs, ref.pairs, atol=1e-12)
    np.testing.assert_allclose(got.first, ref.first, atol=1e-12)


def test_bad_inputs() -> None:
    game = DocGame(6, 6, seed=4)
    one = [CachedGame(game.group(np.arange(6)), 6)]
    with pytest.raises(ShapleyError, match="at least 2 groups"):
        estimate_documents(one, [1.0], SamplingConfig(budget=50))
    two = [CachedGame(game.group(ix), 6) for ix in game.groups(2)]
    with pytest.raises(ShapleyError, match="positive"):
        estimate_documents(two, [1.0, 0.0], SamplingConfig(budget=50))
    with pytest.raises(ShapleyError, match="too small"):
        estimate_documents(two, [1.0, 1.0], SamplingConfig(budget=8))


# -- the evaluator's group views and the CLI ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from coto_tools.train import TrainConfig, train

    root = tmp_path_factory.mktemp("documents")
    result = train(TrainConfig(task="tiny", steps=12, lr=2e-2, seed=1), progress=False)
    return Path(result.save(root / "run"))


def test_group_evaluators_add_up_to_the_whole(tiny_run: Path) -> None:
    from coto_tools.adapters.players import make_players
    from coto_tools.runtime.evaluator import Evaluator
    from coto_tools.train import load_run

    adapter, task, _ = load_run(tiny_run)
    players = make_players(list(adapter.modules), "module")
    ev = Evaluator(task, adapter, split="eval")
    views = ev.document_groups(5)
    assert sum(v.n_examples for v in views) == ev.n_examples
    rng = np.random.default_rng(0)
    for _ in range(4):
        cfg = ev.mask_config(players, rng.random(len(players)) < 0.5)
        whole = ev.value(cfg)
        parts = [v.value(cfg) for v in views]
        n = np.array([p.n for p in parts], dtype=float)
        for m in ("logprob", "accuracy", "loss"):
            assert abs(np.dot(n, [p.get(m) for p in parts]) / n.sum() - whole.get(m)) < 1e-6
    # closing a group evaluator leaves the adapters in place
    views[0].close()
    assert ev.value(ev.mask_config(players, [True] * len(players))) is not None
    with pytest.raises(OptionError, match="cannot be cut"):
        ev.document_groups(ev.n_examples + 1)
    ev.close()


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(["shapley", *argv], capsys)


def test_cli_document_groups_run_resume_and_refusals(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_run, ckpt)
    args = [str(ckpt), "--estimator", "stratified", "--budget", "40", "--document-groups", "4"]
    code, out, err = _cli([*args, "--interactions", "--quiet"], capsys)
    assert code == 0, err
    d = ckpt / "shapley"
    doc = json.loads((d / "shapley.json").read_text())
    groups = doc["document_groups"]
    assert groups["groups"] == 4 and groups["split_evaluations"] <= 40
    assert doc["estimator"] == "stratified-documents" and doc["evaluations"] <= 40
    assert abs(doc["efficiency_gap"]) < 1e-9
    logs = sorted((d / "evaluations.4-groups").glob("group-*.jsonl"))
    assert len(logs) == 4 and not (d / "evaluations.jsonl").exists()
    assert "documents in 4 groups" in out
    inter = json.loads((d / "interactions.json").read_text())
    assert inter["exact"] is False and len(inter["pairs"]) == 15
    # rerun: everything from the groups' logs, the same numbers
    before = (d / "shapley.csv").read_text()
    code, out, err = _cli([*args, "--interactions", "--quiet"], capsys)
    assert code == 0, err
    assert "0 computed now" in out and (d / "shapley.csv").read_text() == before
    # refused before anything is written
    for bad in (["--estimator", "svarm"], ["--document-groups", "0"]):
        other = tmp_path / "o"
        code, _, err = _cli(
            [str(ckpt), "--budget", "40", "--document-groups", "4", *bad, "--out", str(other)],
            capsys,
        )
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert not other.exists()
    # more groups than documents: one line, nothing left behind
    other = tmp_path / "many"
    code, _, err = _cli(
        [str(ckpt), "--estimator", "stratified", "--budget", "40", "--document-groups",
         "100000", "--out", str(other), "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "cannot be cut" in err, err
    assert not other.exists()


def test_auto_document_groups_rule(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``auto`` samples the documents in 12 groups (>= 4 documents each) when the run samples
    with stratified and two pairs per group fit the budget; else the whole split."""
    from coto_tools.runtime.executor import ExecutorConfig
    from coto_tools.shapley.registry import Estimator
    from coto_tools.shapley.run import ShapleyConfig, _document_groups
    from coto_tools.tasks import get_task

    task = get_task("tiny")  # eval 96 documents, quick 32
    n = 6

    def groups(**kw: object) -> int:
        return _document_groups(ShapleyConfig(**kw), n, task, None, None)  # type: ignore[arg-type]

    assert groups(budget=40) == 12
    assert groups(budget=40, split="quick") == 8  # 32 documents: 8 groups of 4
    assert groups(budget=21) == 1  # 2 + 4 (n - 1) = 22: two pairs per group do not fit
    assert groups(budget=64) == 1  # auto -> exact
    assert groups(budget=40, estimator="antithetic") == 1
    assert groups(budget=40, document_groups=1) == 1
    assert groups(budget=40, document_groups=5) == 5
    assert groups(estimator=Estimator.STRATIFIED) == 12  # the default budget
    # --permutations p is a budget of 2 + p (n - 1) whole-split evaluations
    assert groups(permutations=8) == 12 and groups(permutations=3) == 1
    with pytest.raises(ShapleyError, match="too small for two antithetic pairs"):
        groups(budget=21, document_groups=4)  # two pairs in each group cost 2 + 4 (n - 1) = 22
    assert groups(budget=22, document_groups=4) == 4
    ray = ExecutorConfig(kind="ray", workers=1)
    assert _document_groups(ShapleyConfig(budget=40), n, task, ray, None) == 1
    with pytest.raises(OptionError, match="local executor"):
        _document_groups(ShapleyConfig(budget=40, document_groups=4), n, task, ray, None)
    # from the CLI: auto and 1
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_run, ckpt)
    code, out, err = _cli([str(ckpt), "--budget", "40", "--quiet", "--out", str(tmp_path / "a")],
                          capsys)  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "a" / "shapley.json").read_text())
    assert doc["estimator"] == "stratified-documents" and doc["document_groups"]["groups"] == 12
    code, out, err = _cli(
        [str(ckpt), "--budget", "40", "--document-groups", "1", "--quiet", "--out",
         str(tmp_path / "b")], capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "b" / "shapley.json").read_text())
    assert doc["estimator"] == "stratified" and doc["document_groups"] is None
    assert (tmp_path / "b" / "evaluations.jsonl").is_file()
    code, _, err = _cli([str(ckpt), "--document-groups", "many", "--out", str(tmp_path / "c")],
                        capsys)  # fmt: skip
    assert code == 2 and "auto or an integer" in err and not (tmp_path / "c").exists()
    # a budget in permutations: their whole-split cost, in groups
    code, out, err = _cli([str(ckpt), "--permutations", "8", "--quiet", "--out",
                           str(tmp_path / "p")], capsys)  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "p" / "shapley.json").read_text())
    assert doc["document_groups"]["groups"] == 12 and doc["evaluations"] <= 2 + 8 * 5
    # an explicit count the budget cannot serve: one line, exit 2, nothing written
    # (--permutations 1: 2 + 5 = 7 whole-split evaluations; one pair on the whole split fits)
    argv = [str(ckpt), "--permutations", "1", "--estimator", "stratified", "--document-groups",
            "4", "--out", str(tmp_path / "d")]  # fmt: skip
    code, _, err = _cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "too small" in err, err
    assert not (tmp_path / "d").exists()


def test_auto_resumes_a_whole_split_log(tiny_run: Path, tmp_path: Path) -> None:
    """A folder holding a whole-split log (an interrupted ``--document-groups 1`` run, or one of
    an earlier version) is resumed as such under ``auto``; ``--force`` starts over in groups."""
    from coto_tools.shapley.run import LOG_FILE, ShapleyConfig, shapley_run

    out = tmp_path / "s"
    first = shapley_run(tiny_run, ShapleyConfig(budget=40, document_groups=1, out=out))
    with pytest.warns(UserWarning, match="resuming this whole-split evaluation log"):
        again = shapley_run(tiny_run, ShapleyConfig(budget=40, out=out))
    assert again.summary["evaluations_computed"] == 0 and again.summary["document_groups"] is None
    np.testing.assert_array_equal(again.primary.values, first.primary.values)
    fresh = shapley_run(tiny_run, ShapleyConfig(budget=40, out=out, force=True))
    assert fresh.summary["document_groups"]["groups"] == 12
    assert (out / LOG_FILE).is_file()  # --force removes the logs of the run it starts
