"""Benchmark: Shapley estimators' error against exact values at equal evaluation budgets.

For a table game (``--table file.npy|file.json``, 2^n values indexed by coalition bitmask; see
``coto_tools.shapley.TableGame``) or, by default, a synthetic 12-player "redundant adapters"
game (``redundant_adapter_game``: a saturating function of an additive score plus pairwise and
triple synergies/conflicts), compare each estimator's relative L2 error
``||phi_hat - phi|| / ||phi||`` and Spearman correlation with the exact values, averaged over
``--seeds`` seeds, and the evaluations each needs for a mean relative L2 error of ``--target``.

Our estimators: one long run per seed; because the sample sequence does not depend on the
budget, the estimate a run with budget ``B`` would return is the last trace point using at most
``B`` evaluations, so error curves are read off the convergence trace (budget resolution 2%).
shapiq 1.4.1 approximators (where importable) run once per budget on a coarser grid.

Run:  python benchmarks/bench_shapley_estimators.py [--table T] [--seeds 20] [--game-seed 0]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings

import numpy as np

from coto_tools.shapley import (
    ESTIMATORS,
    Estimator,
    SamplingConfig,
    TableGame,
    redundant_adapter_game,
    spearman,
)
from coto_tools.shapley.cache import CachedGame

OURS = [Estimator.PERMUTATION, Estimator.ANTITHETIC, Estimator.KERNELSHAP, Estimator.SVARM]
SHAPIQ_GRID = [60, 100, 150, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200]


def rel_l2(est: np.ndarray, phi: np.ndarray) -> float:
    return float(np.linalg.norm(est - phi) / np.linalg.norm(phi))


def ours_curves(game: TableGame, phi: np.ndarray, seeds: int, b_max: int, grid: np.ndarray):
    """{name: (err (seeds, grid), rho (seeds, grid))} read off convergence traces."""
    out = {}
    for est in OURS:
        err = np.full((seeds, grid.size), np.nan)
        rho = np.full((seeds, grid.size), np.nan)
        t0 = time.perf_counter()
        for seed in range(seeds):
            cached = CachedGame(game, game.n_players)
            cfg = SamplingConfig(budget=b_max, seed=seed, trace_growth=1.02)
            res = ESTIMATORS[est](cached, cfg)
            ev = res.trace.evaluations
            for j, b in enumerate(grid):
                idx = np.searchsorted(ev, b, side="right") - 1
                if idx >= 0:
                    err[seed, j] = rel_l2(res.trace.estimates[idx], phi)
                    rho[seed, j] = spearman(res.trace.estimates[idx], phi)
        out[est.value] = (err, rho, time.perf_counter() - t0)
    return out


def shapiq_curves(game: TableGame, phi: np.ndarray, seeds: int, grid: list[int]):
    try:
        import shapiq
    except ImportError:
        print("shapiq not importable: skipping its approximators", file=sys.stderr)
        return {}
    n = game.n_players
    specs = {
        "shapiq.PermutationSamplingSV": (shapiq.PermutationSamplingSV, {}),
        "shapiq.KernelSHAP(paired)": (shapiq.KernelSHAP, {"pairing_trick": True}),
        "shapiq.SVARM": (shapiq.SVARM, {}),
        "shapiq.StratifiedSamplingSV": (shapiq.StratifiedSamplingSV, {}),
        "shapiq.kADDSHAP": (shapiq.kADDSHAP, {}),
    }
    out = {}
    for name, (cls, kw) in specs.items():
        err = np.full((seeds, len(grid)), np.nan)
        rho = np.full((seeds, len(grid)), np.nan)
        t0 = time.perf_counter()
        for seed in range(seeds):
            for j, b in enumerate(grid):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    iv = cls(n=n, random_state=seed, **kw).approximate(b, game)
                v = np.asarray(iv.get_n_order_values(1), dtype=np.float64)
                err[seed, j] = rel_l2(v, phi)
                rho[seed, j] = spearman(v, phi)
        out[name] = (err, rho, time.perf_counter() - t0)
    return out


def evals_to(err: np.ndarray, grid: np.ndarray, target: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # budgets below a run's first sample
        mean = np.nanmean(err, axis=0)
    ok = np.nonzero(mean <= target)[0]
    return float(grid[ok[0]]) if ok.size else float("nan")


def at(err: np.ndarray, grid: np.ndarray, b: int) -> np.ndarray:
    j = int(np.searchsorted(grid, b, side="right") - 1)
    return err[:, j]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", help=".npy or .json table of 2^n values (default: synthetic)")
    p.add_argument("--metric", default=None, help="metric of a multi-metric JSON table")
    p.add_argument("--n", type=int, default=12, help="players of the synthetic game")
    p.add_argument("--game-seed", type=int, default=0, help="seed of the synthetic game")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--target", type=float, default=0.05)
    p.add_argument("--budgets", default="100,200,500,1000,2000")
    p.add_argument("--no-shapiq", action="store_true")
    args = p.parse_args(argv)

    if args.table:
        game = TableGame.load(args.table, metric=args.metric)
        label = args.table
    else:
        game = redundant_adapter_game(args.n, args.game_seed)
        label = f"redundant_adapter_game(n={args.n}, seed={args.game_seed})"
    n = game.n_players
    phi = game.shapley_values()
    b_max = min(1 << n, 3200)
    grid = np.unique(np.round(np.geomspace(20, b_max, 300)).astype(int))
    print(f"game: {label}; players: {n}; sum phi = {phi.sum():.4g}; seeds: {args.seeds}")
    print(f"exact phi: {np.array2string(phi, precision=3)}")

    rows = ours_curves(game, phi, args.seeds, b_max, grid)
    shap = {} if args.no_shapiq else shapiq_curves(game, phi, args.seeds, SHAPIQ_GRID)
    budgets = [int(b) for b in args.budgets.split(",")]
    base = evals_to(rows["permutation"][0], grid, args.target)

    head = f"{'estimator':30s}" + "".join(f"  L2@{b:<6d}" for b in budgets)
    head += "".join(f"  rho@{b:<5d}" for b in budgets)
    head += f"  evals->{args.target:g}  vs perm  time_s"
    print("\n" + head)
    print("-" * len(head))
    for name, (err, rho, secs) in list(rows.items()) + list(shap.items()):
        g = grid if name in rows else np.asarray(SHAPIQ_GRID)
        cells = []
        for b in budgets:
            e = at(err, g, b) if b >= g[0] else np.full(1, np.nan)
            cells.append(f"  {np.nanmean(e):.4f}  " if np.isfinite(e).any() else "  n/a     ")
        for b in budgets:
            r = at(rho, g, b) if b >= g[0] else np.full(1, np.nan)
            cells.append(f"  {np.nanmean(r):.3f}   " if np.isfinite(r).any() else "  n/a     ")
        need = evals_to(err, g, args.target)
        ratio = need / base if np.isfinite(base) else float("nan")
        print(f"{name:30s}" + "".join(cells) + f"  {need:10.0f}  {ratio:6.2f}  {secs:6.1f}")
    print(
        "\nours: budget resolution 2% (trace); shapiq: grid "
        + ",".join(map(str, SHAPIQ_GRID))
        + ". evals->target = smallest budget with mean rel. L2 error <= target."
    )
    print(
        "rerun: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    )


if __name__ == "__main__":
    main()
