"""Benchmark: the evaluator (gated branches + prefix cache) vs a naive one on permutation chains.

Game: bbc-topic's ``quick`` split (128 documents), 18 module players (q/k/v of 6 layers). The
adapter is a trained run (``--run DIR`` from ``coto-tools train --task bbc-topic --steps 60
--out DIR``) or, without one, a random non-zero rank-8 adapter (the output says which).

The coalitions are those coto-tools' permutation estimator asks for (seed ``--seed``, budget
``--budget``), recorded once with a stand-in game: the draws do not depend on the values, so
every evaluator sees the same permutation chains. Measured side by side, chain by chain (so
load from other processes hits all alike):

- ``naive``: fresh merged weights ``W + sum g s B A`` and a full forward of the split per
  configuration (no gating, no caching of anything);
- ``evaluator``: :class:`~coto_tools.runtime.evaluator.Evaluator` with prefix reuse, fed the
  estimator's batches (``SamplingConfig.batch_size``, default 256: many chains per call,
  sorted into a depth-first walk of the prefix tree);
- ``evaluator, one chain per call``: the same, each chain sent alone (cross-call reuse comes
  only from the bounded prefix cache);
- length chunks: the evaluator's default ``text_chunk=32`` (texts regrouped by length, so
  less padding; equal to a plain forward up to float rounding) vs ``text_chunk=0`` (the
  task's batches as given).

Also (``--stacked``): two configurations in one forward with per-row gates vs one after the
other; (``--profile``): cProfile and torch.profiler of one evaluation and a short Shapley run.

Rerun:  python benchmarks/bench_evaluator.py [--run DIR] [--budget 54] [--threads 1] [--stacked]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from coto_tools.adapters.lora import LoraAdapter, LoraModule  # noqa: E402
from coto_tools.adapters.players import Players, make_players  # noqa: E402
from coto_tools.runtime.evaluator import Evaluator  # noqa: E402
from coto_tools.shapley import ESTIMATORS, Estimator, SamplingConfig  # noqa: E402
from coto_tools.shapley.cache import CachedGame  # noqa: E402
from coto_tools.tasks import get_task  # noqa: E402
from coto_tools.tasks.base import Task, metrics_from_logits  # noqa: E402

DEFAULT_RUN = "/tmp/perf9/bbc-topic-60"


def bench_adapter(run: str | None) -> tuple[LoraAdapter, Task, str]:
    """(adapter, task, label): the run's adapter, or a random non-zero one if there is none."""
    if run and (Path(run) / "coto.json").is_file():
        from coto_tools.train import load_run

        adapter, task, rec = load_run(run)
        return adapter, task, f"trained run {run} ({rec['method']}, {rec.get('steps', '?')} steps)"
    task = get_task("bbc-topic")
    model = task.build_model()
    g = torch.Generator().manual_seed(0)
    mods = {}
    for t in task.default_targets():
        lin = model.get_submodule(t)
        mods[t] = LoraModule(
            A=torch.randn(8, lin.in_features, generator=g) * 0.02,
            B=torch.randn(lin.out_features, 8, generator=g) * 0.02,
            alpha=16.0,
        )
    return LoraAdapter(mods), task, "random non-zero rank-8 adapter (no trained run found)"


def record_calls(n: int, budget: int, seed: int, batch_size: int) -> list[np.ndarray]:
    """The coalition matrices coto-tools' permutation estimator sends to its game, in order."""
    calls: list[np.ndarray] = []

    def game(mat: np.ndarray) -> np.ndarray:
        calls.append(np.array(mat, dtype=bool))
        return mat.sum(axis=1).astype(np.float64)

    cfg = SamplingConfig(budget=budget, seed=seed, batch_size=batch_size)
    ESTIMATORS[Estimator.PERMUTATION](CachedGame(game, n), cfg)
    return calls


class NaiveEvaluator:
    """Fresh merged weights ``W + sum_j g_j s_j B_j A_j`` and a full forward per configuration."""

    def __init__(self, task: Task, adapter: LoraAdapter, split: str, model: nn.Module) -> None:
        self.task, self.adapter, self.model = task, adapter, model
        self.batches = task.batches(split)
        self.labels = torch.cat([b.labels for b in self.batches])
        self.base = {m: model.get_submodule(m).weight.detach().clone() for m in adapter.modules}

    def logits(self, gates: dict[str, float]) -> torch.Tensor:
        with torch.inference_mode():
            for m, w0 in self.base.items():
                w = w0.clone()
                if gates.get(m, 0.0) != 0.0:
                    w += gates[m] * self.adapter.modules[m].delta().to(w.dtype)
                self.model.get_submodule(m).weight.copy_(w)
            return torch.cat([self.task.logits(self.model, b) for b in self.batches])

    def value(self, gates: dict[str, float]) -> float:
        return metrics_from_logits(self.logits(gates), self.labels).logprob


@dataclass
class Lane:
    """One contestant: its total seconds and the values it returned, by coalition."""

    name: str
    seconds: float = 0.0
    values: dict[bytes, float] = field(default_factory=dict)
    evaluator: Evaluator | None = None


def _evaluate(lane: Lane, rows: np.ndarray, players: Players, naive: NaiveEvaluator | None) -> None:
    t0 = time.perf_counter()
    if lane.evaluator is not None:
        ev = lane.evaluator
        out = [m.logprob for m in ev.value_batch([ev.mask_config(players, r) for r in rows])]
    else:
        assert naive is not None  # noqa: S101  (internal invariant of this script)
        out = [naive.value(players.gates(r)) for r in rows]
    lane.seconds += time.perf_counter() - t0
    lane.values.update({r.tobytes(): v for r, v in zip(rows, out, strict=True)})


def chains_side_by_side(
    task: Task, adapter: LoraAdapter, *, budget: int, seed: int = 0, split: str = "quick"
) -> dict[str, object]:
    """Evaluations/s of the naive evaluator and the evaluator variants on the same chains."""
    players = make_players(adapter.names, "module")
    n = len(players)
    batched = record_calls(n, budget, seed, 256)
    chained = record_calls(n, budget, seed, 1)
    mk = lambda **kw: Evaluator(task, adapter, split=split, model=task.build_model(), **kw)  # noqa: E731
    lanes = {
        "naive": Lane("naive (merged weights, full forward)"),
        "batched": Lane(
            "evaluator, estimator batches, no length chunks", evaluator=mk(text_chunk=0)
        ),
        "chain": Lane(
            "evaluator, one chain per call, no length chunks", evaluator=mk(text_chunk=0)
        ),
        "chain_chunk": Lane(
            "evaluator, one chain per call (default length chunks)", evaluator=mk()
        ),
        "batched_chunk": Lane("evaluator, estimator batches (defaults)", evaluator=mk()),
    }
    naive = NaiveEvaluator(task, adapter, split, task.build_model())
    # chained[0] is [empty, full]; then one call per chain. batched: [empty, full], then big calls.
    pending = list(batched)
    seen: set[bytes] = set()
    for i, call in enumerate(chained):
        new = np.array([r for r in call if r.tobytes() not in seen])
        seen.update(r.tobytes() for r in call)
        jobs = [("naive", new), ("chain", call), ("chain_chunk", call)]
        # hand the batched lanes each estimator call once all its coalitions have come up
        while pending and all(r.tobytes() in seen for r in pending[0]):
            call_b = pending.pop(0)
            jobs += [("batched", call_b), ("batched_chunk", call_b)]
        for key, rows in jobs[i % len(jobs) :] + jobs[: i % len(jobs)]:  # rotate the order
            if len(rows):
                _evaluate(lanes[key], rows, players, naive)
    n_eval = len(lanes["naive"].values)
    ref = np.array([lanes["naive"].values[k] for k in sorted(lanes["naive"].values)])
    rows = []
    for lane in lanes.values():
        got = np.array([lane.values[k] for k in sorted(lanes["naive"].values)])
        ev = lane.evaluator
        rows.append(
            {
                "name": lane.name,
                "seconds": lane.seconds,
                "evals_per_s": n_eval / lane.seconds,
                "speedup": lanes["naive"].seconds / lane.seconds,
                "max_abs_diff": float(np.abs(got - ref).max()),
                "layer_passes": None if ev is None else ev.layer_passes,
                "cache_peak_mb": None
                if ev is None or ev._runner is None
                else ev._runner.cache.peak_bytes / 2**20,
            }
        )
    return {"n_players": n, "n_evaluations": n_eval, "n_chains": len(chained) - 1, "rows": rows}


def stacked_vs_sequential(task: Task, adapter: LoraAdapter, split: str = "quick", reps: int = 2):
    """Seconds for two configurations: one after the other vs stacked with per-row gates."""
    from coto_tools.runtime.gated import inject
    from coto_tools.tasks.prompt_head import PROMPT_IDS, PROMPT_MASK, TEXT_IDS, TEXT_MASK

    model = task.build_model()
    handle = inject(model, adapter)
    batches = task.batches(split)
    mods = list(adapter.modules)
    on1 = {m: float(i % 2) for i, m in enumerate(mods)}
    on2 = {m: float((i + 1) % 2) for i, m in enumerate(mods)}

    def sequential() -> torch.Tensor:
        out = []
        for gates in (on1, on2):
            handle.set_gates(gates)
            out.append(torch.cat([task.logits(model, b) for b in batches]))
        return torch.stack(out)

    def stacked() -> torch.Tensor:
        outs = []
        for b in batches:
            x = b.inputs
            embs = []
            for ids, mask in ((x[TEXT_IDS], x[TEXT_MASK]), (x[PROMPT_IDS], x[PROMPT_MASK])):
                k = ids.shape[0]
                for m in mods:
                    handle.layers[m].gates["default"] = torch.tensor([on1[m]] * k + [on2[m]] * k)
                embs.append(task.embed(model, ids.repeat(2, 1), mask.repeat(2, 1)))  # type: ignore[attr-defined]
            t, p = embs
            n, c = x[TEXT_IDS].shape[0], x[PROMPT_IDS].shape[0]
            from coto_tools.tasks.prompt_head import prompt_logits

            outs.append(
                torch.stack(
                    [
                        prompt_logits(t[:n], p[:c], task.temperature),  # type: ignore[attr-defined]
                        prompt_logits(t[n:], p[c:], task.temperature),  # type: ignore[attr-defined]
                    ]
                )
            )
        return torch.cat(outs, dim=1)

    times = {"sequential": 0.0, "stacked": 0.0}
    with torch.inference_mode():
        a, b = sequential(), stacked()
        for r in range(reps):
            for name, fn in (("sequential", sequential), ("stacked", stacked))[:: 1 - 2 * (r % 2)]:
                t0 = time.perf_counter()
                fn()
                times[name] += time.perf_counter() - t0
    handle.remove()
    return times, float((a - b).abs().max())


def profile_evaluation(
    task: Task, adapter: LoraAdapter, split: str = "quick", top: int = 10
) -> str:
    """cProfile + torch.profiler of one evaluation, and cProfile of a short Shapley run."""
    from torch.profiler import ProfilerActivity, profile

    buf = io.StringIO()
    ev = Evaluator(task, adapter, split=split)
    ev.value({})  # embeddings, first-call overheads
    pr = cProfile.Profile()
    pr.enable()
    ev.value({m: 1.0 for m in adapter.names})
    pr.disable()
    buf.write("== cProfile, one evaluation (all 18 adapters on), by own time ==\n")
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ev.value({m: 0.5 for m in adapter.names})
    buf.write("== torch.profiler, one evaluation ==\n")
    buf.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top) + "\n")
    from coto_tools.shapley.game_adapter import AdapterGame

    players = make_players(adapter.names, "module")
    game = CachedGame(AdapterGame(ev, players), len(players), metric="logprob")
    pr = cProfile.Profile()
    pr.enable()
    ESTIMATORS[Estimator.PERMUTATION](game, SamplingConfig(budget=20, seed=1))
    pr.disable()
    buf.write("== cProfile, permutation Shapley run (budget 20 evaluations), cumulative ==\n")
    pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(top + 8)
    ev.close()
    return buf.getvalue()


def print_chains(res: dict[str, object]) -> None:
    print(
        f"{res['n_evaluations']} evaluations from {res['n_chains']} permutation chains, "
        f"{res['n_players']} module players"
    )
    head = f"{'contestant':48s} {'s':>8} {'eval/s':>7} {'speedup':>8} {'layer passes':>12} "
    print(head + f"{'cache MB':>9} {'max|dv|':>9}")
    for r in res["rows"]:  # type: ignore[attr-defined]
        lp = "-" if r["layer_passes"] is None else str(r["layer_passes"])
        mb = "-" if r["cache_peak_mb"] is None else f"{r['cache_peak_mb']:.0f}"
        print(
            f"{r['name']:48s} {r['seconds']:8.1f} {r['evals_per_s']:7.3f} "
            f"{r['speedup']:7.2f}x {lp:>12} {mb:>9} {r['max_abs_diff']:9.1e}"
        )
    print(f"(naive layer passes: {6 * res['n_evaluations']})")  # type: ignore[operator]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=DEFAULT_RUN, help="run dir of coto-tools train (bbc-topic)")
    ap.add_argument("--budget", type=int, default=54, help="evaluations of the permutation run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stacked", action="store_true", help="also measure per-row-gate stacking")
    ap.add_argument("--profile", action="store_true", help="also profile one evaluation")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    adapter, task, label = bench_adapter(args.run)
    print(f"adapter: {label}; torch threads {torch.get_num_threads()}; "
          f"load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    print_chains(chains_side_by_side(task, adapter, budget=args.budget, seed=args.seed))
    if args.stacked:
        times, diff = stacked_vs_sequential(task, adapter)
        print(
            f"two configurations: sequential {times['sequential']:.2f} s, stacked per-row gates "
            f"{times['stacked']:.2f} s (ratio {times['sequential'] / times['stacked']:.2f}x; "
            f"max |logit diff| {diff:.1e})"
        )
    if args.profile:
        print(profile_evaluation(task, adapter))
    print(f"load avg at end {os.getloadavg()[0]:.2f}")
    print(
        "rerun: python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    )


if __name__ == "__main__":
    main()
