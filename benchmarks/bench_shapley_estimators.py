"""Benchmark: Shapley estimators' error against exact values at equal evaluation budgets.

For one or more table games (``--table file.npy|file.json``, repeatable; 2^n values indexed by
coalition bitmask; see ``coto_tools.shapley.TableGame``; or a per-document ``.safetensors``
table of bench_shapley_doctable.py, whose game is the mean over its documents) or, by default, a
synthetic 12-player "redundant adapters" game (``redundant_adapter_game``: a saturating function
of an additive score plus pairwise and triple synergies/conflicts), compare each estimator's
relative L2 error ``||phi_hat - phi|| / ||phi||`` and Spearman correlation with the exact values
over ``--seeds`` seeds, and the evaluations each needs to reach ``--target``:

    evals->target = the smallest budget on the grid from which the *median* (over seeds)
    relative L2 error stays <= target at every larger grid budget.

All estimators are read on the same budget grid (``GRID``). Ours: one long run per seed; because
the sample sequence does not depend on the budget, the estimate a run with budget ``B`` would
return is the last trace point using at most ``B`` evaluations. shapiq's approximators (1.4.1,
where importable) run once per budget and seed. ``cover@300`` is the share of players whose 95%
interval at 300 evaluations holds the exact value (over seeds and players).

Run:  python benchmarks/bench_shapley_estimators.py [--table T ...] [--seeds 20] [--out FILE]
      python benchmarks/bench_shapley_estimators.py --summarize A.json B.json [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

from coto_tools.adapters.atomic import atomic_write_text
from coto_tools.shapley import (
    AUTO_SAMPLING,
    ESTIMATORS,
    Estimator,
    SamplingConfig,
    TableGame,
    redundant_adapter_game,
    spearman,
)
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.result import t_quantile

OURS = [
    Estimator.PERMUTATION,
    Estimator.ANTITHETIC,
    Estimator.KERNELSHAP,
    Estimator.SVARM,
    Estimator.STRATIFIED,
]
GRID = np.array(
    [40, 50, 60, 70, 80, 90, 100, 115, 130, 150, 175, 200, 225, 250, 275, 300, 350, 400, 450]
    + [500, 600, 700, 800, 1000, 1200, 1500, 2000, 2500, 3200]
)
COVER_AT = 300
# shapiq's SPEX takes about 50 s per run on 12 players (too slow for seeds x grid) and
# ProxySPEX needs lightgbm: both left out.
SHAPIQ_SPECS = {
    "shapiq.PermutationSamplingSV": ("PermutationSamplingSV", {}),
    "shapiq.KernelSHAP(paired)": ("KernelSHAP", {"pairing_trick": True}),
    "shapiq.SVARM": ("SVARM", {}),
    "shapiq.StratifiedSamplingSV": ("StratifiedSamplingSV", {}),
    "shapiq.OwenSamplingSV": ("OwenSamplingSV", {}),
    "shapiq.UnbiasedKernelSHAP": ("UnbiasedKernelSHAP", {}),
    "shapiq.kADDSHAP": ("kADDSHAP", {}),
}


def rel_l2(est: np.ndarray, phi: np.ndarray) -> float:
    return float(np.linalg.norm(est - phi) / np.linalg.norm(phi))


def ours_curves(game: TableGame, phi: np.ndarray, seeds: int, grid: np.ndarray):
    """{name: (err (seeds, grid), rho (seeds, grid), cover@COVER_AT, secs)} from the traces."""
    out = {}
    b_max = int(min(grid[-1], 1 << game.n_players))
    for est in OURS:
        err = np.full((seeds, grid.size), np.nan)
        rho = np.full((seeds, grid.size), np.nan)
        inside: list[float] = []
        t0 = time.process_time()
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
            small = ESTIMATORS[est](
                CachedGame(game, game.n_players), SamplingConfig(budget=COVER_AT, seed=seed)
            )
            q = t_quantile(small.dof)
            inside.extend(np.abs(small.values - phi) <= q * small.std_errors)
        out[est.value] = (err, rho, float(np.mean(inside)), time.process_time() - t0)
    return out


def shapiq_run(name: str, n: int, budget: int, seed: int, game: object) -> np.ndarray:
    """First-order values of one run of shapiq's approximator ``name`` (a key of
    :data:`SHAPIQ_SPECS`) with ``budget`` evaluations and ``seed``, its prints and warnings
    silenced."""
    import shapiq

    cls_name, kw = SHAPIQ_SPECS[name]
    cls = getattr(shapiq, cls_name, None) or getattr(shapiq.approximator, cls_name)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        iv = cls(n=n, random_state=seed, **kw).approximate(int(budget), game)
    return np.asarray(iv.get_n_order_values(1), dtype=np.float64)


def shapiq_curves(game: TableGame, phi: np.ndarray, seeds: int, grid: np.ndarray):
    try:
        import shapiq  # noqa: F401
    except ImportError:
        print("shapiq not importable: skipping its approximators", file=sys.stderr)
        return {}
    n = game.n_players
    out = {}
    for name in SHAPIQ_SPECS:
        err = np.full((seeds, grid.size), np.nan)
        rho = np.full((seeds, grid.size), np.nan)
        t0 = time.process_time()
        for seed in range(seeds):
            for j, b in enumerate(grid):
                if b > 1 << n:
                    continue
                v = shapiq_run(name, n, int(b), seed, game)
                err[seed, j] = rel_l2(v, phi)
                rho[seed, j] = spearman(v, phi)
        out[name] = (err, rho, float("nan"), time.process_time() - t0)
    return out


def evals_to(err: np.ndarray, grid: np.ndarray, target: float) -> float:
    """Smallest grid budget from which the median error over seeds stays <= target."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # budgets below a run's first sample
        med = np.nanmedian(err, axis=0)
    bad = ~(med <= target)
    if bad[-1]:
        return float("nan")
    last_bad = np.nonzero(bad)[0]
    j = 0 if last_bad.size == 0 else int(last_bad[-1]) + 1
    return float(grid[j])


def table_block(label, game, phi, rows, budgets, target, seeds) -> list[str]:
    lines = [
        f"game: {label}; players: {game.n_players}; sum phi = {phi.sum():.4g}; seeds: {seeds}",
        f"exact phi: {np.array2string(phi, precision=3)}",
        "",
    ]
    head = f"{'estimator':30s}" + "".join(f"  L2@{b:<6d}" for b in budgets)
    head += "".join(f"  rho@{b:<5d}" for b in budgets)
    head += f"  evals->{target:g}  cover@{COVER_AT}  cpu_s"
    lines += [head, "-" * len(head)]
    for name, (err, rho, cover, secs) in rows.items():
        cells = []
        for b in budgets:
            j = int(np.searchsorted(GRID, b, side="right") - 1)
            e = err[:, j]
            cells.append(f"  {np.nanmedian(e):.4f}  " if np.isfinite(e).any() else "  n/a     ")
        for b in budgets:
            j = int(np.searchsorted(GRID, b, side="right") - 1)
            r = rho[:, j]
            cells.append(f"  {np.nanmedian(r):.3f}   " if np.isfinite(r).any() else "  n/a     ")
        need = evals_to(err, GRID, target)
        cov = f"{cover:.3f}" if np.isfinite(cover) else "  -  "
        lines.append(f"{name:30s}" + "".join(cells) + f"  {need:10.0f}  {cov:>9s}  {secs:6.1f}")
    return lines


def load_table(path: str, metric: str | None) -> TableGame:
    """A ``.npy``/``.json`` table, or a per-document table (``.safetensors`` from
    bench_shapley_doctable.py) as the game of the mean over its documents."""
    if not path.endswith(".safetensors"):
        return TableGame.load(path, metric=metric)
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        values = f.get_tensor("logprob").mean(axis=1)
    return TableGame(values)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", action="append", help=".npy or .json table (repeatable)")
    p.add_argument("--metric", default=None, help="metric of a multi-metric JSON table")
    p.add_argument("--n", type=int, default=12, help="players of the synthetic game")
    p.add_argument("--game-seed", type=int, default=0, help="seed of the synthetic game")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--target", type=float, default=0.05)
    p.add_argument("--budgets", default="100,200,300,500,1000")
    p.add_argument("--no-shapiq", action="store_true")
    p.add_argument("--out", help="also write the printed report to this file (+ .json)")
    p.add_argument(
        "--summarize",
        nargs="+",
        metavar="JSON",
        help="only print (and --out) the summary of earlier runs' .json files",
    )
    args = p.parse_args(argv)
    if args.summarize:
        merged: dict[str, dict[str, float]] = {}  # a table's rows from several files
        lower: dict[str, dict[str, int]] = {}
        for f in args.summarize:
            doc = json.loads(Path(f).read_text())
            for k, v in doc["need"].items():
                merged.setdefault(k, {}).update(
                    {e: x for e, x in v.items() if e not in merged.get(k, {})}
                )
            lower |= doc.get("shapiq_lower_bound", {})
        summary = list(merged.items())
        text = summary_lines(summary, args.target, lower) + [
            "from: " + ", ".join(args.summarize),
            "rerun: python "
            + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        ]
        print("\n".join(text))
        if args.out:
            atomic_write_text(Path(args.out), "\n".join(text) + "\n")
        return

    wall0, cpu0 = time.perf_counter(), time.process_time()
    games = []
    for t in args.table or []:
        games.append((t, load_table(t, args.metric)))
    if not games:
        games.append(
            (
                f"redundant_adapter_game(n={args.n}, seed={args.game_seed})",
                redundant_adapter_game(args.n, args.game_seed),
            )
        )
    budgets = [int(b) for b in args.budgets.split(",")]
    lines: list[str] = []
    summary: list[tuple[str, dict[str, float]]] = []
    for label, game in games:
        phi = game.shapley_values()
        rows = ours_curves(game, phi, args.seeds, GRID)
        if not args.no_shapiq:
            rows |= shapiq_curves(game, phi, args.seeds, GRID)
        block = table_block(label, game, phi, rows, budgets, args.target, args.seeds)
        print("\n".join(block) + "\n", flush=True)
        lines += block + [""]
        summary.append((label, {k: evals_to(v[0], GRID, args.target) for k, v in rows.items()}))

    tail = summary_lines(summary, args.target)
    tail += [
        f"grid: {','.join(map(str, GRID))}; evals->target: smallest grid budget from which the "
        f"median relative L2 error over {args.seeds} seeds stays <= {args.target:g}.",
        f"time: {time.perf_counter() - wall0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU "
        "(one thread).",
        "rerun: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
    ]
    lines += tail
    print("\n".join(tail))
    if args.out:
        atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
        need = {label: {k: float(v) for k, v in d.items()} for label, d in summary}
        doc = {"target": args.target, "seeds": args.seeds, "need": need}
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(doc, indent=1) + "\n")


DOCS = "stratified-documents"


def summary_lines(
    summary: list[tuple[str, dict[str, float]]],
    target: float,
    lower: dict[str, dict[str, int]] | None = None,
) -> list[str]:
    """One line per table. ``lower[table][approximator]``: the fewest evaluations a shapiq
    approximator can need given its grid (bench_shapley_large.py: one that never reached the
    target needs more than its largest budget); the goal's ratio is judged on it."""
    out = [
        f"summary: evaluations to median relative L2 <= {target:g} (whole-split evaluations' "
        "worth of documents for 'docs'); auto = stratified, which an adapter run (coto-tools "
        "shapley) runs on 12 groups of documents ('docs', bench_shapley_documents.py; only "
        "tables with per-document values can measure it); goal: auto <= 300 and <= 0.5 x the "
        "best shapiq approximator, judged on 'docs' where measured, else 'strat' ('-': not run "
        "on that table; 'nan': not reached on that table's grid; '>N': not reached within N)",
        f"{'table':61s} {'perm':>6s} {'anti':>6s} {'kshap':>6s} {'svarm':>6s} {'strat':>6s}"
        f" {'docs':>6s} {'best shapiq':>32s} {'auto/shapiq':>11s} {'goal':>5s}",
    ]
    for label, need in summary:
        low = (lower or {}).get(label, {})
        shap = {k: v for k, v in need.items() if k.startswith("shapiq.")}
        # the count to compare with: the measured one, else the lower bound, else none
        bound = {k: v if np.isfinite(v) else float(low.get(k, np.inf)) for k, v in shap.items()}
        best = min(bound, key=bound.__getitem__, default="")
        best_v = bound.get(best, float("nan"))
        a = need.get(DOCS, need[AUTO_SAMPLING.value])
        ratio = a / best_v if best and np.isfinite(best_v) else float("nan")
        ok = a <= 300 and np.isfinite(ratio) and ratio <= 0.5
        cells = " ".join(
            f"{need[e.value]:6.0f}" if e.value in need else f"{'-':>6s}"
            for e in (
                Estimator.PERMUTATION,
                Estimator.ANTITHETIC,
                Estimator.KERNELSHAP,
                Estimator.SVARM,
                Estimator.STRATIFIED,
            )
        )
        cells += f" {need[DOCS]:6.0f}" if DOCS in need else f" {'-':>6s}"
        reached = best and np.isfinite(shap.get(best, np.nan))
        shown = (
            f"{best.removeprefix('shapiq.')} {best_v:.0f}"
            if reached
            else (f"{best.removeprefix('shapiq.')} >{best_v - 1:.0f}" if best else "n/a")
        )
        r = f"{ratio:11.2f}" if reached else f"{'<=' + format(ratio, '.2f'):>11s}"
        out.append(f"{Path(label).name:61s} {cells} {shown:>32s} {r} {'yes' if ok else 'NO':>5s}")
    return out + [""]


if __name__ == "__main__":
    main()
