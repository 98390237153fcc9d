"""Benchmark: Shapley estimators on a real adapter game too large to tabulate (18 module players).

The query, key and value adapters of the 6 layers of a trained bbc-topic checkpoint are 18
players: 2^18 = 262,144 coalitions, about 5 hours of evaluation on 2 cores (0.065 s per coalition,
measured below), so the exact values are out of reach and a high-budget *reference* stands in
for them. Three phases:

1. *Record.* Every estimator run the comparison needs (ours: one run per seed up to the largest
   budget, whose trace gives every smaller budget; shapiq's approximators: one run per budget and
   seed; the reference runs) is first played against a recording game. The coalitions a sampler
   asks for depend on its seed and budget only, never on the values, so this gives the exact set
   of coalitions to evaluate (phase 3 checks it: a lookup game refuses any coalition not
   evaluated).
2. *Evaluate* that set once, in the evaluator's prefix-sharing order (lower layers vary slowest),
   appending to an :class:`~coto_tools.shapley.EvaluationLog` in ``--workdir`` (an interrupted
   run resumes). The values are saved to ``--data`` (safetensors: coalition keys and the three
   metrics, the players and the checkpoint's hash in the header), so phase 3 can be rerun
   without the model: ``--from-data FILE``.
3. *Compare.* The reference for seed ``s`` pools every run of ours except seed ``s``'s, plus two
   high-budget runs (stratified and antithetic, ``--reference-budget`` evaluations each, seeds
   10,000 and 10,001), weighted per player by each estimator's spread over the seeds
   (:func:`pooled_reference`), so it is independent of the runs it scores; its standard error is
   printed, and the two high-budget runs alone are compared with it as a check. Each
   estimator's relative L2 error against it, the evaluations to reach ``--target`` (median over
   ``--seeds`` seeds, as in bench_shapley_estimators.py), and the coverage of the 95% intervals.

Measured (2026-12-02, 2 cores): the checkpoint of ``coto-tools train --task bbc-topic --method
coto --seed 2 --targets q,k,v``, 48 documents of the quick split: 39,829 coalitions, evaluated in
2,869 s wall / 5,303 s CPU; results in
benchmarks/results/shapley_estimators_bbc-topic-coto-s2_quick48_qkv18.txt, the values in
benchmarks/data/shapley_partial_bbc-topic-coto-s2_quick48_qkv18.safetensors.

Run:  python benchmarks/bench_shapley_large.py [--checkpoint DIR] [--docs 48] [--threads 2]
      python benchmarks/bench_shapley_large.py --from-data benchmarks/data/<file>.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_shapley_estimators import evals_to, rel_l2, shapiq_run  # noqa: E402
from bench_shapley_real import ensure_checkpoint, open_game  # noqa: E402

from coto_tools.adapters.atomic import atomic_write_text  # noqa: E402
from coto_tools.shapley import ESTIMATORS, Estimator, SamplingConfig  # noqa: E402
from coto_tools.shapley.cache import CachedGame  # noqa: E402
from coto_tools.shapley.result import t_quantile  # noqa: E402

# What fits in about an hour of evaluation on 2 cores (31,000 coalitions at 48 documents): the
# default estimator and the previous one; the two shapiq approximators that needed the fewest
# evaluations on every 12-player table; budgets up to 600 (twice the goal's 300, so a shapiq
# count above the grid still decides the goal's 0.5x ratio for an auto count <= 300).
OURS = (Estimator.STRATIFIED, Estimator.ANTITHETIC)
SHAPIQ = ("shapiq.KernelSHAP(paired)", "shapiq.kADDSHAP")
GRID = np.array([100, 130, 150, 175, 200, 250, 300, 350, 400, 500, 600])
SHAPIQ_GRID = np.array([150, 200, 300, 400, 600])
# added after the first measurement, where no shapiq approximator reached the target by 600:
# both also at 1200, to bound the goal's ratio
SHAPIQ_EXTRA = {"shapiq.KernelSHAP(paired)": (1200,), "shapiq.kADDSHAP": (1200,)}


def shapiq_grid(name: str) -> np.ndarray:
    return np.array(sorted({*SHAPIQ_GRID.tolist(), *SHAPIQ_EXTRA.get(name, ())}))


REF_SEEDS = (10_000, 10_001)
COVER_AT = (150, 300)


def _zeros(coalitions: np.ndarray) -> np.ndarray:
    """A game that answers 0 (phase 1: the coalitions asked for are what counts)."""
    return np.zeros(len(np.atleast_2d(coalitions)))


def plan(n: int, seeds: int, ref_budget: int, use_shapiq: bool):
    """Every run of the comparison: (kind, name, seed, budget)."""
    runs = [("ours", Estimator.STRATIFIED.value, REF_SEEDS[0], ref_budget)]
    runs.append(("ours", Estimator.ANTITHETIC.value, REF_SEEDS[1], ref_budget))
    for est in OURS:
        for seed in range(seeds):
            runs.append(("ours", est.value, seed, int(GRID[-1])))
            for b in COVER_AT:
                runs.append(("ours", est.value, seed, b))
    if use_shapiq:
        for name in SHAPIQ:
            for seed in range(seeds):
                for b in shapiq_grid(name):
                    runs.append(("shapiq", name, seed, int(b)))
    return runs


def play(run: tuple[str, str, int, int], cached: CachedGame, n: int, trace: bool):
    kind, name, seed, budget = run
    cached.begin_run()
    if kind == "ours":
        cfg = SamplingConfig(budget=budget, seed=seed, trace_growth=1.0 if trace else 1.1)
        return ESTIMATORS[Estimator(name)](cached, cfg)
    return shapiq_run(name, n, budget, seed, cached)


def record(n: int, runs) -> list[int]:
    """The distinct coalitions ``runs`` ask for (played against a game of zeros)."""
    store: dict[int, dict[str, float]] = {}
    cached = CachedGame(_zeros, n, store=store)
    for r in runs:
        play(r, cached, n, trace=False)
    return sorted(store)


def evaluate(args, keys: list[int]) -> tuple[dict[int, dict[str, float]], dict[str, Any]]:
    from tqdm.auto import tqdm

    from coto_tools.runtime.evaluator import Evaluator
    from coto_tools.shapley import EvaluationLog
    from coto_tools.shapley.game_adapter import AdapterGame, weights_hash

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = ensure_checkpoint(args.checkpoint, workdir, args.threads)
    kinds = tuple(args.kinds.split(","))
    adapter, task, record_, players, split_label, fp = open_game(
        ckpt, kinds, args.split, args.docs, args.threads
    )
    n = len(players)
    if n != args.n:
        raise SystemExit(f"{ckpt}: {n} module players of kinds {kinds}, expected {args.n}")
    log = EvaluationLog(workdir / f"evaluations_{ckpt.name}_{split_label}_{n}.jsonl", fp, n)
    evaluator = Evaluator(task, adapter, split=args.split, batch_size=args.docs)
    game = AdapterGame(evaluator, players)
    todo = [k for k in keys if k not in log.entries]
    print(f"{ckpt}: {n} players; {len(keys)} coalitions needed, {len(todo)} not yet in the log")
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=len(todo), unit="eval", file=sys.stderr)
    cached = CachedGame(game, n, metric="logprob", log=log, chunk=args.chunk)
    cached.on_computed = bar.update
    cached.values(todo)
    bar.close()
    log.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if todo:
        print(
            f"evaluated {len(todo)} coalitions in {wall:.0f} s wall, {cpu:.0f} s CPU "
            f"({wall / len(todo):.3f} s each; {evaluator.layer_passes} layer passes, "
            f"{args.threads} threads)"
        )
    meta = {
        "description": (
            f"{len(keys)} coalitions of the {n} {'/'.join(kinds)} adapters of {ckpt.name} "
            f"({record_['task']}, {record_['method']}, seed {record_['seed']}) on the "
            f"{split_label} split, the ones bench_shapley_large.py's comparison asks for; "
            "key = coalition bitmask, bit i = player i"
        ),
        "checkpoint_weights_sha256": weights_hash(ckpt),
        "task": record_["task"],
        "split": split_label,
        "method": record_["method"],
        "player_names": list(players.names),
        "evaluation_wall_s": round(wall, 1),
        "evaluation_cpu_s": round(cpu, 1),
        "evaluated_now": len(todo),
    }
    store = {k: dict(cached.store[k]) for k in keys}
    return store, meta


def save_data(path: Path, store: dict[int, dict[str, float]], meta: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    keys = sorted(store)
    tensors = {"keys": np.asarray(keys, dtype=np.int64)}
    for m in sorted(next(iter(store.values()))):
        tensors[m] = np.asarray([store[k][m] for k in keys], dtype=np.float64)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp), metadata={"coto_bench": json.dumps(meta)})
    os.replace(tmp, path)


def load_data(path: Path) -> tuple[dict[int, dict[str, float]], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["coto_bench"])
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    keys = arrays.pop("keys")
    store = {int(k): {m: float(a[i]) for m, a in arrays.items()} for i, k in enumerate(keys)}
    return store, meta


def pooled_reference(
    finals: dict[str, np.ndarray], refs: dict[str, tuple[np.ndarray, int]], budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-seed-out references from every run of ours.

    ``finals[est]``: ``(seeds, n)`` estimates at ``budget`` evaluations; ``refs[est]``: one more
    run of that estimator at a higher budget. Each estimator's per-player variance at ``budget``
    is its spread over the seeds; a run at budget ``B`` gets the weight
    ``1 / (var * budget / B)``. The reference for seed ``s`` pools every run except those of seed
    ``s``, so it is independent of the runs it scores. Returns ``(ref (seeds, n), se (seeds, n),
    pooled over all runs (n,))``."""
    seeds = next(iter(finals.values())).shape[0]
    num = np.zeros((seeds + 1, finals[next(iter(finals))].shape[1]))
    den = np.zeros_like(num)
    for est, runs in finals.items():
        var = np.maximum(runs.var(axis=0, ddof=1), 1e-30)
        w = 1.0 / var
        total_num = (runs * w).sum(axis=0)
        value, b = refs[est]
        w_ref = 1.0 / (var * budget / b)
        for s in range(seeds + 1):  # row `seeds`: nothing left out
            keep = total_num - (runs[s] * w if s < seeds else 0.0)
            num[s] += keep + value * w_ref
            den[s] += w * (seeds - (1 if s < seeds else 0)) + w_ref
    ref = num / den
    return ref[:seeds], 1.0 / np.sqrt(den[:seeds]), ref[seeds]


def default_reference(
    lookup: CachedGame, n: int, seeds: int = 20, ref_budget: int = 4000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`pooled_reference` of the default runs of :func:`plan` (``seeds`` seeds at the
    grid's top budget, the two ``ref_budget`` runs) played on ``lookup``: for scripts that
    compare other estimators with this benchmark's reference."""
    runs = plan(n, seeds, ref_budget, False)
    refs = {
        r.estimator: (r.values, ref_budget) for r in (play(x, lookup, n, False) for x in runs[:2])
    }
    top = int(GRID[-1])
    finals = {
        est: np.stack([play(("ours", est, s, top), lookup, n, False).values for s in range(seeds)])
        for est in refs
    }
    return pooled_reference(finals, refs, top)


def compare(store, meta, args, runs) -> list[str]:
    n = len(meta["player_names"])
    lookup = CachedGame(None, n, metric="logprob", store=store)
    ref_runs = [play(r, lookup, n, trace=False) for r in runs[:2]]
    seeds = args.seeds
    top = int(GRID[-1])
    traces = {
        est.value: [play(("ours", est.value, s, top), lookup, n, trace=True) for s in range(seeds)]
        for est in OURS
    }
    finals = {k: np.stack([r.values for r in v]) for k, v in traces.items()}
    refs = {r.estimator: (r.values, args.reference_budget) for r in ref_runs}
    ref_by_seed, se_by_seed, pooled = pooled_reference(finals, refs, top)
    two = np.mean([r.values for r in ref_runs], axis=0)
    norm = float(np.linalg.norm(pooled))
    pooled_evals = seeds * top * len(OURS) + 2 * args.reference_budget
    lines = [
        f"game: {meta['description']}",
        f"players: {', '.join(meta['player_names'])}",
        f"reference for seed s: every run of ours except seed s's ({len(OURS)} estimators x "
        f"{seeds - 1} seeds x {top} evaluations, plus stratified (seed {REF_SEEDS[0]}) and "
        f"antithetic (seed {REF_SEEDS[1]}) at {args.reference_budget} each), each estimator "
        "weighted per player by the inverse of its variance over the seeds",
        f"  pooled values (all runs, about {pooled_evals} coalition uses): "
        f"{np.array2string(pooled, precision=4)}; sum {pooled.sum():.4f}",
        f"  reference standard error, relative L2: "
        f"{float(np.median(np.linalg.norm(se_by_seed, axis=1))) / norm:.4f} (median over seeds; "
        "an error e is read as about sqrt(e^2 + this^2))",
        f"  check: the two high-budget runs alone differ by relative L2 "
        f"{rel_l2(ref_runs[0].values, ref_runs[1].values):.4f}; their mean is "
        f"{rel_l2(two, pooled):.4f} from the pooled values",
        "",
    ]
    rows: dict[str, tuple[np.ndarray, dict[int, float]]] = {}
    for est in OURS:
        err = np.full((seeds, GRID.size), np.nan)
        cover: dict[int, list[bool]] = {b: [] for b in COVER_AT}
        for seed in range(seeds):
            res, ref, ref_se = traces[est.value][seed], ref_by_seed[seed], se_by_seed[seed]
            ev = res.trace.evaluations
            for j, b in enumerate(GRID):
                idx = np.searchsorted(ev, b, side="right") - 1
                if idx >= 0:
                    err[seed, j] = rel_l2(res.trace.estimates[idx], ref)
            for b in COVER_AT:
                small = play(("ours", est.value, seed, b), lookup, n, trace=False)
                half = t_quantile(small.dof) * np.sqrt(small.std_errors**2 + ref_se**2)
                cover[b].extend(np.abs(small.values - ref) <= half)
        rows[est.value] = (err, {b: float(np.mean(v)) for b, v in cover.items()})
    shapiq_rows: dict[str, np.ndarray] = {}
    for name in SHAPIQ if args.shapiq else ():
        grid = shapiq_grid(name)
        err = np.full((seeds, grid.size), np.nan)
        for seed in range(seeds):
            for j, b in enumerate(grid):
                est_v = play(("shapiq", name, seed, int(b)), lookup, n, False)
                err[seed, j] = rel_l2(est_v, ref_by_seed[seed])
        shapiq_rows[name] = err
    cols = [int(b) for b in SHAPIQ_GRID] + sorted({b for v in SHAPIQ_EXTRA.values() for b in v})
    head = f"{'estimator':30s}" + "".join(f"  L2@{b:<5d}" for b in cols)
    head += f"  evals->{args.target:g}" + "".join(f"  cover@{b}" for b in COVER_AT)
    lines += [head, "-" * len(head)]
    need: dict[str, float] = {}

    def cells(err: np.ndarray, grid: np.ndarray) -> str:
        out = ""
        for b in cols:
            j = np.nonzero(grid == b)[0]
            out += f"  {np.nanmedian(err[:, j[0]]):.4f} " if j.size else "  -      "
        return out

    for name, (err, cover) in rows.items():
        need[name] = evals_to(err, GRID, args.target)
        cov = "".join(f"  {cover[b]:9.3f}" for b in COVER_AT)
        lines.append(f"{name:30s}{cells(err, GRID)}  {need[name]:10.0f}{cov}")
    for name, err in shapiq_rows.items():
        need[name] = evals_to(err, shapiq_grid(name), args.target)
        lines.append(f"{name:30s}{cells(err, shapiq_grid(name))}  {need[name]:10.0f}")
    lines += [
        "",
        f"evals->target: smallest budget from which the median relative L2 error over {seeds} "
        f"seeds (against the reference) stays <= {args.target:g}; ours read on the grid "
        f"{','.join(map(str, GRID))}, shapiq's on {','.join(map(str, SHAPIQ_GRID))} and "
        f"{SHAPIQ_EXTRA} (one run "
        "per budget and seed). cover@B: share of the 95% t intervals at B evaluations that hold "
        "the reference value, the reference's own standard error added in quadrature.",
    ]
    auto = Estimator.STRATIFIED.value
    low: dict[str, int] = {}
    if shapiq_rows:
        # shapiq's count B on its grid means "more than the grid budget before B"; one that
        # never reached the target needs more than its largest budget: the goal's ratio is
        # judged on that lower bound (the reading least favourable to auto)
        for name in shapiq_rows:
            grid = shapiq_grid(name)
            if np.isfinite(need[name]):
                j = int(np.searchsorted(grid, need[name]))
                low[name] = int(grid[j - 1]) + 1 if j > 0 else 1
            else:
                low[name] = int(grid[-1]) + 1
        best = min(low, key=low.__getitem__)
        worst = need[auto] / min(low.values())
        ok = need[auto] <= 300 and worst <= 0.5
        shown = f"{need[best]:.0f}" if np.isfinite(need[best]) else f"> {low[best] - 1}"
        lines.append(
            f"goal (auto = {auto} <= 300 and <= 0.5 x the best shapiq approximator): auto "
            f"{need[auto]:.0f}; shapiq needs at least {min(low.values())} (best: {best} "
            f"{shown}); ratio at most {worst:.2f}: {'met' if ok else 'NOT met'}"
            + ("" if need[auto] <= 300 else " (auto needs more than 300)")
        )
    lines.append(f"need: {json.dumps(need)}")
    if args.out:
        label = str(args.from_data or args.data or "18-player game")
        doc = {
            "target": args.target,
            "seeds": seeds,
            "need": {label: need},
            "shapiq_lower_bound": {label: low} if low else {},
        }
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(doc, indent=1) + "\n")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="run directory from coto-tools train (default: train one)")
    p.add_argument("--workdir", default="/tmp/coto_bench_shapley_large", help="log + checkpoint")
    p.add_argument("--kinds", default="q,k,v", help="module kinds that are players")
    p.add_argument("--n", type=int, default=18, help="expected number of players")
    p.add_argument("--split", default="quick", choices=["quick", "eval"])
    p.add_argument("--docs", type=int, default=48, help="the split's first DOCS documents")
    p.add_argument("--chunk", type=int, default=64, help="coalitions per call (then logged)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--target", type=float, default=0.05)
    p.add_argument("--reference-budget", type=int, default=4000)
    p.add_argument("--no-shapiq", dest="shapiq", action="store_false")
    p.add_argument("--count-only", action="store_true", help="phase 1 only: how many coalitions")
    p.add_argument("--data", help="where to save the evaluated coalitions (.safetensors)")
    p.add_argument("--from-data", help="skip phases 1-2: the coalitions saved by an earlier run")
    p.add_argument("--out", help="also write the report to this file")
    args = p.parse_args(argv)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    runs = plan(args.n, args.seeds, args.reference_budget, args.shapiq)
    if args.from_data:
        store, meta = load_data(Path(args.from_data))
    else:
        keys = record(args.n, runs)
        print(f"phase 1: {len(runs)} runs ask for {len(keys)} distinct coalitions", flush=True)
        if args.count_only:
            return
        store, meta = evaluate(args, keys)
        if args.data:
            save_data(Path(args.data), store, meta)
            print(f"wrote {args.data}")
    lines = compare(store, meta, args, runs)
    finish(
        lines,
        f"time (phase 3{'' if args.from_data else ', and 1-2 above'})",
        wall0,
        cpu0,
        argv,
        args.out,
    )


def finish(
    lines: list[str], label: str, wall0: float, cpu0: float, argv: list[str] | None, out: str | None
) -> None:
    """Add the time and the rerun command to a report, print it, write it to ``out``."""
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    lines += [
        f"{label}: {wall:.0f} s wall, {cpu:.0f} s CPU",
        "rerun: python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]),
    ]
    print("\n".join(lines))
    if out:
        atomic_write_text(Path(out), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
