"""Benchmark (prototype, not in the package): Shapley values with the documents sampled too.

A coalition's value is a mean over documents, and an evaluation's cost grows with the documents
it runs. On the 18-player game of benchmarks/bench_shapley_large.py the permutation noise is
largely *common* to the documents (a scratch analysis of 69 pairs evaluated per document: the
players' deviations are correlated 0.31 on average across documents, and the variance of the
48-document mean is 1/3.3 of one document's, not 1/48), so a pair run on a few documents carries
most of what the pair on all 48 carries, at a fraction of the cost.

Design measured here: the documents are cut into ``G`` equal groups (the quick split's first 48
documents, ``G = 12`` groups of 4). ``v(S) = mean_g v_g(S)``, so ``phi = mean_g phi_g``: each
group is its own game, sampled by its own ``stratified`` sampler (balanced antithetic blocks, the
shared-slope covariate fit, exact efficiency per group); the pairs go to the groups in cycles of
a random group order; the estimate is the mean of the groups' estimates, its variance the mean of
their variances over ``G``. Cost is counted in *full-split evaluations*: a coalition on one group
costs ``1/G`` of one (the time measured below says whether the cost is in fact proportional).

Phases as in bench_shapley_large.py: record the (group, coalition) pairs the runs ask for,
evaluate them once per group (``--checkpoint``; saved to ``--data``), compare against that
script's pooled reference (all default runs on the whole 48 documents, relative standard error
0.0085; independent of these runs). The time of a group evaluation against a whole-split one is
measured back to back on the same 300 coalitions.

Measured (2026-12-02, 20 seeds, 12 groups of 4 documents; results in
benchmarks/results/shapley_documents_qkv18.txt): median relative L2 0.055 / 0.042 / 0.033 after
150 / 200 / 300 whole splits' worth of documents; 0.05 from 200 on, coverage 0.93-0.98. But a
4-document evaluation is not 1/12 of a 48-document one on 2 CPU cores: it took 0.158 of it in the
back-to-back probe (19.2 vs 121.9 ms; the bulk run: 11.3 ms each), so 200 splits of documents
cost the time of about 300-380 whole-split evaluations, against 600 for the default. Where the
cost is proportional to the documents (large models), the saving would be the full 3x. Not in
the package: the log/resume contract, interactions and the 12-player tables would all need the
group values.

Run:  python benchmarks/bench_shapley_documents.py --checkpoint DIR [--groups 12] [--seeds 20]
      python benchmarks/bench_shapley_documents.py --from-data benchmarks/data/<file>
"""

from __future__ import annotations

import argparse
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

from coto_tools.shapley._bits import full_key  # noqa: E402
from coto_tools.shapley.result import t_quantile  # noqa: E402
from coto_tools.shapley.stratified import StratifiedSampler  # noqa: E402

DATA = HERE / "data" / "shapley_partial_bbc-topic-coto-s2_quick48_qkv18.safetensors"
GRID = np.array([50, 75, 100, 150, 200, 300])  # full-split evaluations
DOCS = 48
SeedSeq = np.random.SeedSequence


class GroupedRun:
    """One seed's run: a stratified sampler per group, pairs to groups in random cycles."""

    def __init__(self, n: int, groups: int, seed: int) -> None:
        self.n, self.g = n, groups
        self.rng = np.random.default_rng(SeedSeq([seed, 1]))
        self.rngs = [np.random.default_rng(SeedSeq([seed, 2, g])) for g in range(groups)]
        self.samplers = [StratifiedSampler(n) for _ in range(groups)]
        self.cycle: list[int] = []
        self.used: list[set[int]] = [{0, full_key(n)} for _ in range(groups)]
        self.cost = 2 * groups  # every group's v(empty), v(N)

    def start(self, values) -> None:
        for g, s in enumerate(self.samplers):
            s.start(values(g, 0), values(g, full_key(self.n)))

    def step(self, budget_units: int, values) -> bool:
        """One pair on the next group, if it fits ``budget_units`` (group evaluations)."""
        if not self.cycle:
            self.cycle = list(self.rng.permutation(self.g))
        g = self.cycle[0]
        sampler = self.samplers[g]
        keys = sampler.draw(self.rngs[g])
        new = set(keys) - self.used[g]
        if self.cost + len(new) > budget_units:
            return False  # the run ends (the drawn pair is never added or estimated)
        self.cycle.pop(0)
        self.used[g] |= new
        self.cost += len(new)
        sampler.add(keys, np.array([values(g, k) for k in keys]))
        return True

    def estimate(self) -> tuple[np.ndarray, np.ndarray, int]:
        vals, var, dof = [], [], 0
        for s in self.samplers:
            if s.n_samples < 2:
                return np.full(self.n, np.nan), np.full(self.n, np.nan), 0
            v, se = s.estimate()
            vals.append(v)
            var.append(se**2)
            dof += s.n_samples - 1
        return np.mean(vals, axis=0), np.sqrt(np.sum(var, axis=0)) / self.g, dof


def simulate(n: int, groups: int, seeds: int, values, on_step=None) -> None:
    """Every seed's run up to the grid's top budget; ``on_step(seed, run)`` after each pair."""
    top = int(GRID[-1]) * groups
    for seed in range(seeds):
        run = GroupedRun(n, groups, seed)
        run.start(values)
        while run.step(top, values):
            if on_step is not None:
                on_step(seed, run)


def group_task(task: Any, group: int, size: int) -> Any:
    """The task restricted to documents ``group * size .. + size`` of each split (one batch)."""
    cls = type(task)

    class Group(cls):  # type: ignore[misc, valid-type]
        def batches(self, split: str, batch_size: int = 64) -> list[Any]:
            return cls.batches(self, split, size)[group : group + 1]

    Group.__name__ = cls.__name__
    clone = object.__new__(Group)
    clone.__dict__.update(task.__dict__)
    return clone


def evaluate_groups(ckpt: Path, groups: int, need: dict[int, set[int]], threads: int):
    from bench_shapley_real import open_game

    from coto_tools.runtime.evaluator import Evaluator
    from coto_tools.shapley.cache import CachedGame
    from coto_tools.shapley.game_adapter import AdapterGame

    adapter, task, _, players, _, _ = open_game(ckpt, ("q", "k", "v"), "quick", None, threads)
    size = DOCS // groups
    # back to back, the same coalitions (the first group's first pairs): whole-split evaluation
    # time against one group's
    probe = sorted(need[0])[:300]
    per_eval = {}
    for docs, g0 in ((DOCS, 0), (size, 0)):
        ev = Evaluator(group_task(task, g0, docs), adapter, split="quick", batch_size=docs)
        cached = CachedGame(AdapterGame(ev, players), len(players), metric="logprob", chunk=64)
        t0 = time.perf_counter()
        cached.values(probe)
        per_eval[docs] = (time.perf_counter() - t0) / len(probe)
    out: dict[int, dict[int, float]] = {}
    wall = cpu = 0.0
    count = 0
    for g in range(groups):
        ev = Evaluator(group_task(task, g, size), adapter, split="quick", batch_size=size)
        cached = CachedGame(AdapterGame(ev, players), len(players), metric="logprob", chunk=64)
        keys = sorted(need[g])
        t0, c0 = time.perf_counter(), time.process_time()
        vals = cached.values(keys)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        count += len(keys)
        out[g] = dict(zip(keys, (float(x) for x in vals), strict=True))
        print(f"group {g}: {len(keys)} coalitions, {wall:.0f} s wall so far", flush=True)
    return out, {
        "wall_s": wall,
        "cpu_s": cpu,
        "coalitions": count,
        "docs_per_group": size,
        "probe_s_per_eval_whole": per_eval[DOCS],
        "probe_s_per_eval_group": per_eval[size],
    }


def save(path: Path, store: dict[int, dict[int, float]], meta: dict[str, Any]) -> None:
    import json
    import os

    from safetensors.numpy import save_file

    g = np.concatenate([np.full(len(v), k) for k, v in store.items()]).astype(np.int64)
    keys = np.concatenate([np.array(list(v), dtype=np.int64) for v in store.values()])
    vals = np.concatenate([np.array(list(v.values())) for v in store.values()])
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {"group": g, "keys": keys, "logprob": vals},
        str(tmp),
        metadata={"coto_bench": json.dumps(meta)},
    )
    os.replace(tmp, path)


def load(path: Path):
    import json

    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["coto_bench"])
        g, k, v = (f.get_tensor(x) for x in ("group", "keys", "logprob"))
    store: dict[int, dict[int, float]] = {}
    for gi, ki, vi in zip(g.tolist(), k.tolist(), v.tolist(), strict=True):
        store.setdefault(gi, {})[ki] = vi
    return store, meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint")
    p.add_argument("--groups", type=int, default=12)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", help="where to save the group evaluations")
    p.add_argument("--from-data")
    p.add_argument("--target", type=float, default=0.05)
    p.add_argument("--out")
    args = p.parse_args(argv)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    store_full, meta_full = load_data(DATA)
    n = len(meta_full["player_names"])
    if args.from_data:
        store, meta = load(Path(args.from_data))
        groups = int(meta["groups"])
    else:
        groups = args.groups
        need: dict[int, set[int]] = {g: set() for g in range(groups)}

        def record(g: int, k: int) -> float:
            need[g].add(k)
            return 0.0

        simulate(n, groups, args.seeds, record)
        print(f"phase 1: {sum(map(len, need.values()))} (group, coalition) pairs", flush=True)
        store, cost = evaluate_groups(Path(args.checkpoint), groups, need, args.threads)
        meta = {
            "groups": groups,
            "seeds": args.seeds,
            **cost,
            "checkpoint": Path(args.checkpoint).name,
        }
        if args.data:
            save(Path(args.data), store, meta)
    # reference: bench_shapley_large.py's pool of every default run on all 48 documents
    from coto_tools.shapley.cache import CachedGame

    lookup = CachedGame(None, n, metric="logprob", store=store_full)
    _, ref_se, ref = default_reference(lookup, n)
    # sanity: the groups' mean is the 48-document value
    both = [k for k in store[0] if k in store_full and all(k in store[g] for g in range(groups))]
    gap = max(
        abs(np.mean([store[g][k] for g in range(groups)]) - store_full[k]["logprob"])
        for k in both[:50]
    )
    err = np.full((args.seeds, GRID.size), np.nan)
    inside: dict[int, list[bool]] = {int(b): [] for b in GRID}

    # the estimate at each budget: the last one of a run whose cost is still within it
    last: dict[tuple[int, int], tuple] = {}

    def on_step(seed: int, run: GroupedRun) -> None:
        within = [int(b) for b in GRID if run.cost / groups <= b]
        if within:
            result = run.estimate()
            for b in within:
                last[seed, b] = result

    simulate(n, groups, args.seeds, lambda g, k: store[g][k], on_step)
    for seed in range(args.seeds):
        for j, b in enumerate(GRID):
            if (seed, int(b)) in last and np.isfinite(last[seed, int(b)][0]).all():
                est, se, dof = last[seed, int(b)]
                err[seed, j] = rel_l2(est, ref)
                half = t_quantile(max(dof, 1)) * np.sqrt(se**2 + np.median(ref_se, axis=0) ** 2)
                inside[int(b)].extend(np.abs(est - ref) <= half)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # budgets where a group has < 2 pairs
        med = np.nanmedian(err, axis=0)
    ratio = meta["probe_s_per_eval_group"] / meta["probe_s_per_eval_whole"]
    need_b = evals_to(err, GRID, args.target)
    first = int(need_b) if np.isfinite(need_b) else None
    lines = [
        f"game: the 18 q/k/v adapters of {meta['checkpoint']}, the quick split's first {DOCS} "
        f"documents in {groups} groups of {DOCS // groups}; {args.seeds} seeds",
        f"group evaluations: {meta['coalitions']} in {meta['wall_s']:.0f} s wall, "
        f"{meta['cpu_s']:.0f} s CPU",
        f"time per evaluation, back to back on the same 300 coalitions: whole split "
        f"{meta['probe_s_per_eval_whole'] * 1000:.1f} ms, one group "
        f"{meta['probe_s_per_eval_group'] * 1000:.1f} ms ({ratio:.3f} of it; proportional "
        f"would be {1 / groups:.3f})",
        f"check: mean over groups - the 48-document value, max over {len(both[:50])} "
        f"coalitions: {gap:.2e}",
        "reference: bench_shapley_large.py's pool of all default runs (relative SE 0.0085)",
        "",
        "documents run, in whole splits:  " + "  ".join(f"{b:>6d}" for b in GRID),
        "the same in time (whole splits): " + "  ".join(f"{b * groups * ratio:6.0f}" for b in GRID),
        "median relative L2:              " + "  ".join(f"{x:6.4f}" for x in med),
        "(nan: some group had fewer than 2 pairs, so no interval and no estimate)",
        "coverage of the 95% intervals:   "
        + "  ".join(
            f"{np.mean(inside[int(b)]) if inside[int(b)] else float('nan'):6.3f}" for b in GRID
        ),
        "",
        (
            f"median <= {args.target:g} from {first} whole splits of documents on, the time of "
            f"{first * groups * ratio:.0f} whole-split evaluations (the default needs 600)"
            if first is not None
            else f"median above {args.target:g} on the whole grid"
        ),
    ]
    finish(lines, "time", wall0, cpu0, argv, args.out)


if __name__ == "__main__":
    main()
