"""Benchmark: Shapley values with the documents sampled too (``--document-groups``).

:mod:`coto_tools.shapley.documents` deals the split's documents round-robin into ``G`` groups
and runs ``stratified`` on each group's game, the antithetic pairs going to the groups in
cycles; the estimate is the documents-weighted sum of the groups' estimates and the budget is
counted in whole-split evaluations (a group evaluation costs its share of the documents). This
script measures it against the whole-split default on the real games we hold:

* ``--game large`` (default): the 18-module-player game of benchmarks/bench_shapley_large.py
  (q, k, v adapters of 6 layers, the quick split's first 48 documents). Phase 1 records the
  (group, coalition) pairs every seed's run asks for (the sequence depends only on the seed),
  phase 2 evaluates them from ``--checkpoint`` through the package's group evaluators
  (:meth:`Evaluator.document_groups`, saved to ``--data``; ``--from-data`` reuses them), phase 3
  replays every seed at each budget of the grid against that script's pooled reference (all
  default runs on the 48 documents, relative standard error 0.0085, independent of these runs).
  The time of a group evaluation against a whole-split one is measured back to back on the same
  coalitions.
* ``--doctable FILE``: a 12-player table of per-document values
  (benchmarks/bench_shapley_doctable.py): every coalition's value on every document is known, so
  both estimators run on exact lookups and are scored against the exact Shapley values.

Per budget: median relative L2 error over ``--seeds`` seeds and the coverage of the 95%
intervals; the whole-split default (``stratified``) beside it on the same game.

Run:  python benchmarks/bench_shapley_documents.py --checkpoint DIR --data benchmarks/data/X
      python benchmarks/bench_shapley_documents.py --from-data benchmarks/data/X
      python benchmarks/bench_shapley_documents.py --doctable benchmarks/data/Y
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_shapley_estimators import evals_to, rel_l2  # noqa: E402
from bench_shapley_large import default_reference, finish, load_data  # noqa: E402

from coto_tools.adapters.atomic import atomic_write_text  # noqa: E402
from coto_tools.shapley import estimate_shapley  # noqa: E402
from coto_tools.shapley._sampling import SamplingConfig  # noqa: E402
from coto_tools.shapley.cache import CachedGame  # noqa: E402
from coto_tools.shapley.documents import estimate_documents  # noqa: E402
from coto_tools.shapley.result import t_quantile  # noqa: E402

DATA = HERE / "data" / "shapley_partial_bbc-topic-coto-s2_quick48_qkv18.safetensors"
GRID = np.array([50, 75, 100, 150, 200, 250, 300, 400, 600])  # whole-split evaluations
DOCS = 48


def _zeros(coalitions: np.ndarray) -> dict[str, np.ndarray]:
    return {"logprob": np.zeros(len(np.atleast_2d(coalitions)))}


def run_groups(
    stores: list[dict[int, dict[str, float]]], n: int, game: Any, budget: int, seed: int
):
    """One grouped run on lookups over ``stores`` (``game``: fill missing values, or None)."""
    games = [CachedGame(game, n, metric="logprob", store=s) for s in stores]
    return estimate_documents(games, [1.0] * len(stores), SamplingConfig(budget=budget, seed=seed))


def record(n: int, groups: int, seeds: int, top: int) -> list[dict[int, dict[str, float]]]:
    """The (group, coalition) pairs every seed's run asks for up to ``top``."""
    stores: list[dict[int, dict[str, float]]] = [{} for _ in range(groups)]
    for seed in range(seeds):
        run_groups(stores, n, _zeros, top, seed)
    return stores


def evaluate_groups(ckpt: Path, groups: int, need: list[set[int]], threads: int):
    from bench_shapley_real import open_game

    from coto_tools.runtime.evaluator import Evaluator
    from coto_tools.shapley.game_adapter import AdapterGame

    adapter, task, _, players, _, _ = open_game(ckpt, ("q", "k", "v"), "quick", DOCS, threads)
    n = len(players)
    ev = Evaluator(task, adapter, split="quick", batch_size=DOCS)
    views = ev.document_groups(groups)
    # back to back on the same coalitions (the first group's first 300, in the estimator's
    # prefix-sharing order): whole split, then one group
    probe = sorted(need[0])[:300]
    per_eval = {}
    for label, evaluator in (("whole", Evaluator(task, adapter, split="quick", batch_size=DOCS)),
                             ("group", ev.document_groups(groups)[0])):  # fmt: skip
        cached = CachedGame(AdapterGame(evaluator, players), n, metric="logprob", chunk=64)
        t0 = time.perf_counter()
        cached.values(probe)
        per_eval[label] = (time.perf_counter() - t0) / len(probe)
        evaluator.close()
    out: list[dict[int, dict[str, float]]] = []
    wall = cpu = 0.0
    for g, view in enumerate(views):
        cached = CachedGame(AdapterGame(view, players), n, metric="logprob", chunk=64)
        keys = sorted(need[g])
        t0, c0 = time.perf_counter(), time.process_time()
        cached.values(keys)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        out.append(cached.store)
        print(f"group {g + 1}: {len(keys)} coalitions, {wall:.0f} s wall so far", flush=True)
    ev.close()
    return out, {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "coalitions": int(sum(len(x) for x in need)),
        "documents_per_group": [v.n_examples for v in views],
        "probe_s_per_eval_whole": per_eval["whole"],
        "probe_s_per_eval_group": per_eval["group"],
        "threads": threads,
    }


def save(path: Path, stores: list[dict[int, dict[str, float]]], meta: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    g = np.concatenate([np.full(len(s), i) for i, s in enumerate(stores)]).astype(np.int64)
    keys = np.concatenate([np.array(list(s), dtype=np.int64) for s in stores])
    vals = np.concatenate([np.array([v["logprob"] for v in s.values()]) for s in stores])
    tmp = path.with_name(path.name + ".tmp")
    save_file({"group": g, "keys": keys, "logprob": vals}, str(tmp),
              metadata={"coto_bench": json.dumps(meta)})  # fmt: skip
    os.replace(tmp, path)


def load(path: Path) -> tuple[list[dict[int, dict[str, float]]], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["coto_bench"])
        g, k, v = (f.get_tensor(x) for x in ("group", "keys", "logprob"))
    stores: list[dict[int, dict[str, float]]] = [{} for _ in range(int(meta["groups"]))]
    for gi, ki, vi in zip(g.tolist(), k.tolist(), v.tolist(), strict=True):
        stores[gi][ki] = {"logprob": vi}
    return stores, meta


def score(results: dict[tuple[int, int], Any], ref: np.ndarray, ref_se: np.ndarray | None,
          seeds: int) -> tuple[np.ndarray, list[float]]:  # fmt: skip
    """Relative L2 error ``(seeds, grid)`` and the coverage per budget of ``results``."""
    err = np.full((seeds, GRID.size), np.nan)
    cover = []
    for j, b in enumerate(GRID):
        inside: list[bool] = []
        for seed in range(seeds):
            r = results.get((seed, int(b)))
            if r is None or not np.isfinite(r.values).all():
                continue
            err[seed, j] = rel_l2(r.values, ref)
            if not np.isfinite(r.std_errors).all():
                continue  # no interval (a group with one pair): not counted as covered
            extra = 0.0 if ref_se is None else ref_se**2
            half = t_quantile(max(r.dof, 1)) * np.sqrt(r.std_errors**2 + extra)
            inside.extend(np.abs(r.values - ref) <= half)
        cover.append(float(np.mean(inside)) if inside else float("nan"))
    return err, cover


def whole_runs(lookup: CachedGame, n: int, seeds: int) -> dict[tuple[int, int], Any]:
    """The whole-split default (``stratified``) at every budget of the grid, every seed."""
    out = {}
    for seed in range(seeds):
        for b in GRID:
            lookup.begin_run()
            out[seed, int(b)] = estimate_shapley(
                lookup, n, estimator="stratified", budget=int(b), seed=seed
            )
    return out


def rows(label: str, err: np.ndarray, cover: list[float], target: float) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(err, axis=0)
    need = evals_to(err, GRID, target)
    return [
        f"{label:<34}" + "  ".join(f"{x:6.4f}" for x in med)
        + f"   to {target:g}: {int(need) if np.isfinite(need) else '>' + str(GRID[-1])}",
        f"{'  coverage of the 95% intervals':<34}" + "  ".join(f"{c:6.3f}" for c in cover)
        + "   (nan: no interval, a sample or a group with one pair)",
    ]  # fmt: skip


def large(args: argparse.Namespace) -> list[str]:
    store_full, _ = load_data(DATA)
    from_meta = None
    if args.from_data:
        stores, from_meta = load(Path(args.from_data))
        groups = len(stores)
    else:
        groups = args.groups
        need = record(18, groups, args.seeds, int(GRID[-1]))
        print(f"phase 1: {sum(map(len, need))} (group, coalition) pairs", flush=True)
        stores, from_meta = evaluate_groups(
            Path(args.checkpoint), groups, [set(s) for s in need], args.threads
        )
        from_meta |= {"groups": groups, "seeds": args.seeds,
                      "checkpoint": Path(args.checkpoint).name}  # fmt: skip
        if args.data:
            save(Path(args.data), stores, from_meta)
    n = 18
    lookup = CachedGame(None, n, metric="logprob", store=store_full)
    _, ref_se, ref = default_reference(lookup, n)
    both = [k for k in stores[0] if k in store_full and all(k in s for s in stores)][:50]
    gap = max(abs(np.mean([s[k]["logprob"] for s in stores]) - store_full[k]["logprob"])
              for k in both)  # fmt: skip
    grouped = {(seed, int(b)): run_groups(stores, n, None, int(b), seed).combined
               for seed in range(args.seeds) for b in GRID}  # fmt: skip
    err, cover = score(grouped, ref, np.median(ref_se, axis=0), args.seeds)
    err_w, cover_w = score(whole_runs(lookup, n, args.seeds), ref, np.median(ref_se, axis=0),
                           args.seeds)  # fmt: skip
    m = from_meta
    ratio = m["probe_s_per_eval_group"] / m["probe_s_per_eval_whole"]
    need = evals_to(err, GRID, args.target)
    label = str(DATA.relative_to(HERE.parent))
    args.need = {
        label: {"stratified-documents": need, "stratified": evals_to(err_w, GRID, args.target)}
    }
    return [
        f"game: the 18 q/k/v adapters of {m['checkpoint']}, the quick split's first {DOCS} "
        f"documents dealt into {groups} groups of {m['documents_per_group'][0]}; "
        f"{args.seeds} seeds; reference: bench_shapley_large.py's pooled default runs "
        "(relative SE 0.0085; its SE is added to each interval for the coverage)",
        f"group evaluations: {m['coalitions']} in {m['wall_s']:.0f} s wall, {m['cpu_s']:.0f} s "
        f"CPU ({m['threads']} threads)",
        f"time per evaluation, back to back on the same 300 coalitions: whole split "
        f"{m['probe_s_per_eval_whole'] * 1000:.1f} ms, one group "
        f"{m['probe_s_per_eval_group'] * 1000:.1f} ms ({ratio:.3f} of it; proportional: "
        f"{1 / groups:.3f})",
        f"check: documents-weighted sum of the groups - the 48-document value, max over "
        f"{len(both)} coalitions: {gap:.1e}",
        "",
        f"{'whole-split evaluations (budget)':<34}" + "  ".join(f"{b:>6d}" for b in GRID),
        *rows(f"stratified, {groups} document groups", err, cover, args.target),
        *rows("stratified, whole split (default)", err_w, cover_w, args.target),
        "",
        (f"with document groups the median reaches {args.target:g} at {int(need)} whole-split "
         f"evaluations' worth of documents: the time of about {need * groups * ratio:.0f} "
         "whole-split evaluations on this machine (by the probe's ratio)")
        if np.isfinite(need) else f"with document groups: above {args.target:g} on the grid",
    ]  # fmt: skip


def doctable(args: argparse.Namespace) -> list[str]:
    from safetensors import safe_open

    with safe_open(args.doctable, "np") as f:
        meta = json.loads(f.metadata()["coto_bench"])
        table = f.get_tensor("logprob")
    n = len(meta["player_names"])
    docs = table.shape[1]
    groups = args.groups
    whole_v = table.mean(axis=1)
    exact = estimate_shapley(lambda m: whole_v[_keys(m)], n, estimator="exact").values
    parts = [table[:, g::groups].mean(axis=1) for g in range(groups)]
    sizes = [table[:, g::groups].shape[1] for g in range(groups)]
    stores = [{k: {"logprob": float(p[k])} for k in range(1 << n)} for p in parts]
    grouped = {}
    for seed in range(args.seeds):
        for b in GRID:
            games = [CachedGame(None, n, metric="logprob", store=s) for s in stores]
            grouped[seed, int(b)] = estimate_documents(
                games, sizes, SamplingConfig(budget=int(b), seed=seed)
            ).combined
    err, cover = score(grouped, exact, None, args.seeds)
    whole_store = {k: {"logprob": float(whole_v[k])} for k in range(1 << n)}
    lookup = CachedGame(None, n, metric="logprob", store=whole_store)
    err_w, cover_w = score(whole_runs(lookup, n, args.seeds), exact, None, args.seeds)
    args.need = {
        args.doctable: {
            "stratified-documents": evals_to(err, GRID, args.target),
            "stratified": evals_to(err_w, GRID, args.target),
        }
    }
    return [
        f"game: {meta['description']} ({meta['method']}, checkpoint sha256 "
        f"{meta['checkpoint_weights_sha256'][:12]}); {docs} documents dealt into {groups} groups; "
        f"{args.seeds} seeds; scored against the exact Shapley values of the table",
        "",
        f"{'whole-split evaluations (budget)':<34}" + "  ".join(f"{b:>6d}" for b in GRID),
        *rows(f"stratified, {groups} document groups", err, cover, args.target),
        *rows("stratified, whole split (default)", err_w, cover_w, args.target),
    ]


def _keys(mat: np.ndarray) -> np.ndarray:
    m = np.atleast_2d(np.asarray(mat, dtype=bool))
    return (m * (1 << np.arange(m.shape[1]))).sum(axis=1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint")
    p.add_argument("--doctable", help="a per-document 12-player table instead of the 18 players")
    p.add_argument("--groups", type=int, default=12)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", help="where to save the group evaluations")
    p.add_argument("--from-data")
    p.add_argument("--target", type=float, default=0.05)
    p.add_argument("--out")
    args = p.parse_args(argv)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    lines = doctable(args) if args.doctable else large(args)
    finish(lines, "time", wall0, cpu0, argv, args.out)
    if args.out:  # for bench_shapley_estimators.py --summarize, beside the estimators' rows
        doc = {
            "target": args.target,
            "seeds": args.seeds,
            "grid": GRID.tolist(),
            "need": {k: {e: float(x) for e, x in v.items()} for k, v in args.need.items()},
        }
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
