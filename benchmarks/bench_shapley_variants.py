"""Benchmark: two variance-reduction ideas for ``stratified`` on the 18-player game, measured and
not adopted.

On the game of benchmarks/bench_shapley_large.py (the 18 query/key/value adapters of a CoTo
checkpoint, 48 documents) the default estimator needs 600 evaluations for relative L2 error
0.05 (0.072 at 300). A variance analysis of its 527 recorded antithetic pairs says what is left:
a pair's marginal contributions cancel every term of order <= 2, and a cubic fitted to every
evaluated coalition (oracle: 45,214 of them) leaves 12% of the pairs' variance (7% with the
position covariate, 34% with the covariate alone; printed by :func:`variance_analysis`), so the
rest is mostly *third-order* structure (adapters whose effect depends on two others: the largest
terms join a layer's query and key with a third adapter). Two ways at it:

1. *Cross-fitted cubic surrogate* (regression-adjusted Monte Carlo; Witter et al. 2025, arXiv
   2506.11849): ridge-fit ``g(S) = c + sum b_j x_j + sum b_jk x_j x_k + sum b_jkl x_j x_k x_l``
   (``x = +-1``) to the coalitions of the *other* pairs (10 folds of pairs), replace pair ``s``'s
   samples by ``Y_s(v) - Y_s(g_-s) + phi(g_-s)`` (the exact Shapley values of a +-1 polynomial:
   ``phi_i = 2 b_i + (2/3) sum_{j<k} b_ijk``), then the default fit. The third-order penalty is
   scaled by a heredity prior (``(w_j w_k w_l)^(2/3)`` of the players' sizes) and chosen by the
   cross-fit between 0.01 and "no surrogate".
2. *Herded pairs* (kernel herding over permutations, Mitchell et al. 2022, arXiv 2104.12199):
   instead of rotated blocks, each new pair is the best of 256 uniform permutations for the
   running balance of ``x_ij x_ik - 1/3`` (is each pair of other players on the same side of
   player ``i`` about as often as under uniform permutations, which is what the third-order
   terms average over). The rule is equivariant under relabelling the players, so each pair is
   still marginally uniform (unbiased); the pairs are negatively dependent.

The herded pairs ask for coalitions the stored comparison never evaluated; they are in
``--herd-data`` (evaluated once from the checkpoint with ``--checkpoint``). The reference and its
standard error are bench_shapley_large.py's (leave-one-seed-out pool of the default runs), so
the rows compare with its table.

Measured (2026-12-02, 20 seeds; results in benchmarks/results/shapley_variants_qkv18.txt): no
variant reaches 0.05 at 300. The surrogate: 0.064 at 300 (default 0.072), but its intervals cover
0.928 there (the floor is 0.93: the cross-fitted samples' spread understates their error).
Herded pairs: 0.071 at 300, 0.05 reached at 500 instead of 600, but 0.23 at 100 evaluations
(default 0.16: herding gives up the rotated blocks' exact position balance, which the 12-player
tables need at 90-200 evaluations). Both together: 0.062 at 300. Neither replaced the default.

Run:  python benchmarks/bench_shapley_variants.py [--out FILE]
      (first time without --herd-data on disk: add --checkpoint DIR, about 8 min on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_shapley_estimators import evals_to, rel_l2  # noqa: E402
from bench_shapley_large import (  # noqa: E402
    _zeros,
    default_reference,
    evaluate,
    finish,
    load_data,
    save_data,
)

from coto_tools.shapley import SamplingConfig  # noqa: E402
from coto_tools.shapley._bits import keys_to_matrix, prefix_keys  # noqa: E402
from coto_tools.shapley._sampling import run_sampler  # noqa: E402
from coto_tools.shapley.cache import CachedGame  # noqa: E402
from coto_tools.shapley.permutation import marginals  # noqa: E402
from coto_tools.shapley.result import t_quantile  # noqa: E402
from coto_tools.shapley.stratified import StratifiedSampler, position_covariate  # noqa: E402

DATA = HERE / "data" / "shapley_partial_bbc-topic-coto-s2_quick48_qkv18.safetensors"
HERD_DATA = HERE / "data" / "shapley_partial_bbc-topic-coto-s2_quick48_qkv18_herded.safetensors"
GRID = np.array([100, 150, 200, 250, 300, 400, 500, 600])
TOP = 600
COVER_AT = 300
LAMBDAS = (1e-2, np.inf)  # third-order penalty per coalition; inf = no surrogate
LOW_ORDER_PENALTY = 1e-6
FOLDS = 10
CANDIDATES = 256


class CubicBasis:
    """+-1 products up to order 3; columns: 1, x_j, x_j x_k, x_j x_k x_l."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pairs = np.array(list(combinations(range(n), 2)), dtype=np.int64)
        self.triples = np.array(list(combinations(range(n), 3)), dtype=np.int64)
        self.n_low = 1 + n + len(self.pairs)
        self.n_features = self.n_low + len(self.triples)

    def features(self, keys: Sequence[int]) -> np.ndarray:
        x = np.where(keys_to_matrix(keys, self.n), 1.0, -1.0)
        p, t = self.pairs, self.triples
        return np.concatenate(
            [
                np.ones((len(x), 1)),
                x,
                x[:, p[:, 0]] * x[:, p[:, 1]],
                x[:, t[:, 0]] * x[:, t[:, 1]] * x[:, t[:, 2]],
            ],
            axis=1,
        )

    def heredity(self, size: np.ndarray) -> np.ndarray:
        w = np.maximum(size, 0.0)
        if not w.sum() > 0:
            return np.ones(len(self.triples))
        w = w / w.mean() + 1e-2
        h = np.prod(w[self.triples], axis=1) ** (2.0 / 3.0)
        return h / h.mean()

    def shapley(self, coef: np.ndarray) -> np.ndarray:
        """Exact Shapley values: an odd product over ``T`` gives ``2 b_T / |T|`` to each member,
        an even one nothing."""
        phi = 2.0 * coef[1 : 1 + self.n]
        for c in range(3):
            phi = phi + np.bincount(
                self.triples[:, c], coef[self.n_low :] * (2.0 / 3.0), minlength=self.n
            )
        return phi


def ridge(f: np.ndarray, y: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    r, p = f.shape
    if p <= r:
        return np.linalg.solve(f.T @ f + np.diag(penalty), f.T @ y)
    fp = f / penalty
    return fp.T @ np.linalg.solve(fp @ f.T + np.eye(r), y)


def cross_fitted(
    basis: CubicBasis,
    pair_keys: list[list[int]],
    walk: Callable[[int, np.ndarray], np.ndarray],
    values: dict[int, float],
    y: np.ndarray,
) -> np.ndarray:
    """Pair ``s``'s samples corrected by the surrogate fitted without its fold; the penalty
    with the smallest total spread (``inf``: ``y`` unchanged)."""
    m = len(pair_keys)
    k = min(FOLDS, m)
    if k < 2:
        return y
    all_keys = sorted(values)
    row = {key: i for i, key in enumerate(all_keys)}
    f_all = basis.features(all_keys)
    v_all = np.array([values[key] for key in all_keys])
    fold_of = np.arange(m) % k
    owner: dict[int, set[int]] = {}
    for s, keys in enumerate(pair_keys):
        for key in keys[2:]:  # the empty and the full coalition belong to every fold
            owner.setdefault(key, set()).add(int(fold_of[s]))
    best, best_spread = y, float(np.sum(np.var(y, axis=0)))
    for lam in LAMBDAS:
        if not np.isfinite(lam):
            continue
        out = np.empty_like(y)
        for fold in range(k):
            train = np.array([row[key] for key in all_keys if owner.get(key, {-1}) - {fold}])
            penalty = np.full(basis.n_features, LOW_ORDER_PENALTY * len(train))
            prior = basis.heredity(y[fold_of != fold].mean(axis=0))
            penalty[basis.n_low :] = lam * len(train) / prior
            coef = ridge(f_all[train], v_all[train], penalty)
            phi = basis.shapley(coef)
            for s in np.nonzero(fold_of == fold)[0]:
                g = f_all[[row[key] for key in pair_keys[s]]] @ coef
                out[s] = y[s] - walk(int(s), g) + phi
        spread = float(np.sum(np.var(out, axis=0)))
        if spread < best_spread:
            best, best_spread = out, spread
    return best


class Herder:
    """Greedy pairs: of ``CANDIDATES`` uniform permutations the one that keeps
    ``sum_s (x_ij x_ik - 1/3)`` smallest (``x_ij = +1`` when ``j`` comes before ``i``); a pair
    and its reverse have the same products, so this balances pairs."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.d = np.zeros((n, n, n))
        idx = np.arange(n)
        self.mask = np.ones((n, n, n))
        self.mask[:, idx, idx] = 0
        self.mask[idx, idx, :] = 0
        self.mask[idx, :, idx] = 0
        self.first = True

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        n = self.n
        cands = np.array([rng.permutation(n) for _ in range(1 if self.first else CANDIDATES)])
        pos = np.argsort(cands, axis=1)
        x = np.where(pos[:, None, :] < pos[:, :, None], 1.0, -1.0)
        phi = (np.einsum("cij,cik->cijk", x, x) - 1.0 / 3.0) * self.mask
        score = 2 * np.einsum("ijk,cijk->c", self.d, phi) + np.einsum("cijk,cijk->c", phi, phi)
        c = int(np.argmin(score))
        self.d += phi[c]
        self.first = False
        return cands[c]


class VariantSampler(StratifiedSampler):
    def __init__(self, n: int, *, herd: bool, surrogate: bool) -> None:
        super().__init__(n)
        self.herder = Herder(n) if herd else None
        self.basis = CubicBasis(n) if surrogate else None
        self._keys: list[list[int]] = []
        self._values: dict[int, float] = {}

    def start(self, v_empty: float, v_full: float) -> None:
        super().start(v_empty, v_full)
        self._values.update({0: v_empty, (1 << self.n) - 1: v_full})

    def draw(self, rng: np.random.Generator) -> list[int]:
        if self.herder is None:
            return super().draw(rng)
        order = self.herder.draw(rng)
        self._orders.append(order)
        return prefix_keys(order[:-1]) + prefix_keys(order[::-1][:-1])

    def add(self, keys: Sequence[int], values: np.ndarray) -> None:
        super().add(keys, values)
        self._keys.append([0, (1 << self.n) - 1, *keys])
        self._values.update(zip(keys, (float(x) for x in values), strict=True))

    def _pair_walk(self, s: int, g: np.ndarray) -> np.ndarray:
        order, m = self._orders[s], self.n - 1
        a = marginals(order, g[2 : 2 + m], g[0], g[1])
        return 0.5 * (a + marginals(order[::-1], g[2 + m :], g[0], g[1]))

    def _fit(self, idx: slice) -> tuple[np.ndarray, np.ndarray, int]:
        if self.basis is None or self.n_samples < 2:
            return super()._fit(idx)
        rows = np.arange(self.n_samples)[idx]
        keys = [self._keys[s] for s in rows]
        used = {k for ks in keys for k in ks}
        y = cross_fitted(
            self.basis,
            keys,
            lambda j, g: self._pair_walk(int(rows[j]), g),
            {k: self._values[k] for k in used},
            np.asarray(self._y)[rows],
        )
        saved = self._y
        self._y = list(saved)
        for j, s in enumerate(rows):
            self._y[s] = y[j]
        try:
            return super()._fit(idx)
        finally:
            self._y = saved


VARIANTS = {
    "stratified (default)": dict(herd=False, surrogate=False),
    "+ cubic surrogate": dict(herd=False, surrogate=True),
    "herded pairs": dict(herd=True, surrogate=False),
    "herded pairs + cubic surrogate": dict(herd=True, surrogate=True),
}


def run(cached: CachedGame, variant: str, seed: int, budget: int, trace: bool, orders=None):
    cached.begin_run()
    cfg = SamplingConfig(budget=budget, seed=seed, trace_growth=1.0 if trace else 1.1)
    sampler = VariantSampler(cached.n_players, **VARIANTS[variant])
    res = run_sampler(cached, sampler, cfg, name="stratified", budget=budget, max_samples=None)
    if orders is not None:
        orders.extend(sampler._orders[: sampler.n_samples])
    return res


def variance_analysis(store: dict[int, dict[str, float]], n: int, seeds: int) -> list[str]:
    """What is left of the default's pairs: the share of their variance (summed over players)
    that remains in the residual game after a cubic fitted to *every* evaluated coalition, and
    after also regressing each player's samples on the position covariate (oracle fits: a
    ceiling for what a cubic surrogate could remove, not an estimator)."""
    lookup = CachedGame(None, n, metric="logprob", store=store)
    orders: list[np.ndarray] = []
    for s in range(seeds):
        run(lookup, "stratified (default)", s, TOP, trace=False, orders=orders)
    run(lookup, "stratified (default)", 10_000, 4000, trace=False, orders=orders)
    keys = sorted(store)
    basis = CubicBasis(n)
    v = np.array([store[k]["logprob"] for k in keys])
    coef = np.linalg.lstsq(basis.features(keys), v, rcond=None)[0]
    full = (1 << n) - 1

    def pair_samples(values: dict[int, float]) -> np.ndarray:
        out = []
        for order in orders:

            def walk(o):
                chain = [values[k] for k in prefix_keys(o[:-1])]
                return marginals(o, np.array(chain), values[0], values[full])

            out.append(0.5 * (walk(order) + walk(order[::-1])))
        return np.array(out)

    def after_position(y: np.ndarray) -> float:
        f = position_covariate(n)
        left = 0.0
        for i in range(n):
            pos = np.array([int(np.nonzero(o == i)[0][0]) for o in orders])
            a = np.c_[np.ones(len(y)), f[pos]]
            left += float(np.var(y[:, i] - a @ np.linalg.lstsq(a, y[:, i], rcond=None)[0]))
        return left

    vals = {k: store[k]["logprob"] for k in keys}
    g = dict(zip(keys, basis.features(keys) @ coef, strict=True))
    y = pair_samples(vals)
    r = pair_samples({k: vals[k] - g[k] for k in keys})
    total = float(np.sum(np.var(y, axis=0)))
    fit_r2 = 1 - float(np.var(v - basis.features(keys) @ coef)) / float(np.var(v))
    return [
        f"variance analysis ({len(orders)} default pairs; a cubic fitted to all {len(keys)} "
        f"evaluated coalitions, R^2 {fit_r2:.4f}): share of the pairs' variance left",
        f"  position covariate only {after_position(y) / total:.3f}; residual game "
        f"{float(np.sum(np.var(r, axis=0))) / total:.3f}; residual game + position covariate "
        f"{after_position(r) / total:.3f}",
    ]


def herded_coalitions(n: int, seeds: int) -> list[int]:
    rec: dict[int, dict[str, float]] = {}
    cached = CachedGame(_zeros, n, store=rec)
    for s in range(seeds):
        for b in (TOP, COVER_AT):
            run(cached, "herded pairs", s, b, trace=False)
    return sorted(rec)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--herd-data", default=str(HERD_DATA))
    p.add_argument("--checkpoint", help="evaluate the herded coalitions missing from the data")
    p.add_argument("--workdir", default="/tmp/coto_bench_shapley_variants")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--target", type=float, default=0.05)
    p.add_argument("--out")
    args = p.parse_args(argv)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    store, meta = load_data(Path(args.data))
    n = len(meta["player_names"])
    herd_path = Path(args.herd_data)
    if herd_path.exists():
        store.update(load_data(herd_path)[0])
    missing = [k for k in herded_coalitions(n, args.seeds) if k not in store]
    if missing:
        if not args.checkpoint:
            raise SystemExit(f"{len(missing)} herded coalitions not in the data: add --checkpoint")
        split, _, docs = meta["split"].partition("[:")  # e.g. "quick[:48]"
        ev = types.SimpleNamespace(
            checkpoint=args.checkpoint, workdir=args.workdir, kinds="q,k,v", n=n,
            split=split, docs=int(docs.rstrip("]")), chunk=64, threads=args.threads,
        )  # fmt: skip
        new, new_meta = evaluate(ev, missing)
        if new_meta["checkpoint_weights_sha256"] != meta["checkpoint_weights_sha256"]:
            raise SystemExit("--checkpoint is not the checkpoint of --data")
        old = load_data(herd_path)[0] if herd_path.exists() else {}
        old.update(new)
        new_meta["description"] = f"herded pairs' coalitions for {Path(args.data).name}"
        save_data(herd_path, old, new_meta)
        store.update(new)
    lookup = CachedGame(None, n, metric="logprob", store=store)
    ref, ref_se, _ = default_reference(lookup, n, args.seeds)
    lines = variance_analysis(store, n, args.seeds) + [""]
    print("\n".join(lines), flush=True)
    head = f"{'variant':32s}" + "".join(f"  L2@{b:<4d}" for b in GRID)
    head += f"  evals->{args.target:g}  cover@{COVER_AT}  CPU s"
    lines = [
        f"game: {meta['description']}",
        *lines,
        "reference: bench_shapley_large.py's (leave-one-seed-out pool of the default runs)",
        "",
        head,
        "-" * len(head),
    ]
    for variant in VARIANTS:
        c0 = time.process_time()
        err = np.full((args.seeds, GRID.size), np.nan)
        inside: list[bool] = []
        for s in range(args.seeds):
            res = run(lookup, variant, s, TOP, trace=True)
            ev = res.trace.evaluations
            for j, b in enumerate(GRID):
                i = np.searchsorted(ev, b, side="right") - 1
                if i >= 0:
                    err[s, j] = rel_l2(res.trace.estimates[i], ref[s])
            small = run(lookup, variant, s, COVER_AT, trace=False)
            half = t_quantile(small.dof) * np.sqrt(small.std_errors**2 + ref_se[s] ** 2)
            inside.extend(np.abs(small.values - ref[s]) <= half)
        need = evals_to(err, GRID, args.target)
        cells = "".join(f"  {np.nanmedian(err[:, j]):.4f}" for j in range(GRID.size))
        lines.append(
            f"{variant:32s}{cells}  {need:9.0f}  {np.mean(inside):9.3f}  "
            f"{time.process_time() - c0:5.0f}"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        f"median relative L2 over {args.seeds} seeds; evals->{args.target:g}: smallest budget on "
        "the grid from which the median stays below the target; cover: 95% t intervals at "
        f"{COVER_AT} evaluations holding the reference (its standard error added in quadrature)",
    ]
    finish(lines, "time", wall0, cpu0, argv, args.out)


if __name__ == "__main__":
    main()
