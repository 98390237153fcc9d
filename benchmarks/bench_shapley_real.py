"""Benchmark: tabulate a real 12-player adapter game (all 4,096 coalitions), for estimator tests.

From a trained built-in-task checkpoint (``--checkpoint DIR`` from ``coto-tools train``; by
default one is trained with ``coto-tools train --task bbc-topic`` into ``--workdir``), the players
are the query and value adapters of the 6 layers (12 players; the key adapters stay off). Every
coalition is evaluated once on the task's ``quick`` split (128 documents) with the evaluator's
prefix reuse: coalitions are sent in an order where neighbours share their lower layers, and the
evaluator keeps the last configuration's activations, so the saving holds across calls.
Each evaluation is appended to an :class:`~coto_tools.shapley.EvaluationLog` in ``--workdir``,
so an interrupted run resumes where it stopped. The finished table is written to ``--out``
(a ``TableGame`` JSON: player names + 4,096 values per metric, indexed by coalition bitmask).

Then compare the estimators against the exact values at equal budgets:

    python benchmarks/bench_shapley_estimators.py --table benchmarks/data/<table>.json \
        --metric logprob

Run:  python benchmarks/bench_shapley_real.py [--checkpoint DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from coto_tools.adapters.atomic import atomic_write_text
from coto_tools.adapters.players import make_players
from coto_tools.shapley import CachedGame, EvaluationLog, shapley_from_table
from coto_tools.shapley.game_adapter import AdapterGame, game_fingerprint, weights_hash
from coto_tools.tasks.base import METRIC_NAMES

HERE = Path(__file__).resolve().parent
KINDS = ("q", "v")


def ensure_checkpoint(checkpoint: str | None, workdir: Path, threads: int) -> Path:
    if checkpoint:
        return Path(checkpoint)
    ckpt = workdir / "bbc-topic-coto"
    if not (ckpt / "coto.json").is_file():
        cmd = ["coto-tools", "train", "--task", "bbc-topic", "--out", str(ckpt), "--force"]
        cmd += ["--threads", str(threads)]
        print("training:", shlex.join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
    return ckpt


def prefix_order(n_players: int) -> list[int]:
    """All keys except empty/full, sorted so that player 0 (lowest layer) varies slowest."""
    keys = np.arange(1 << n_players, dtype=np.int64)
    rev = np.zeros_like(keys)
    for i in range(n_players):
        rev |= ((keys >> i) & 1) << (n_players - 1 - i)
    order = keys[np.argsort(rev, kind="stable")]
    return [int(k) for k in order if 0 < k < (1 << n_players) - 1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="run directory from coto-tools train (default: train one)")
    p.add_argument("--workdir", default="/tmp/coto_bench_shapley_real", help="log + checkpoint")
    p.add_argument("--split", default="quick", choices=["quick", "eval"])
    p.add_argument(
        "--docs", type=int, default=None, help="only the split's first DOCS documents (cheaper)"
    )
    p.add_argument("--chunk", type=int, default=16, help="coalitions per call (then logged)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--limit", type=int, default=None, help="stop after this many new coalitions")
    p.add_argument("--out", default=None, help="table JSON (default benchmarks/data/...)")
    args = p.parse_args(argv)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = ensure_checkpoint(args.checkpoint, workdir, args.threads)
    adapter, task, record, players, split_label, fp = open_game(
        ckpt, KINDS, args.split, args.docs, args.threads
    )
    n = len(players)
    log_path = workdir / f"evaluations_{record['task']}_{split_label}_qv{n}.jsonl"
    log = EvaluationLog(log_path, fp, n)
    from coto_tools.runtime.evaluator import Evaluator

    evaluator = Evaluator(task, adapter, split=args.split, batch_size=args.docs or 64)
    game = AdapterGame(evaluator, players)
    cached = CachedGame(game, n, metric="logprob", log=log)
    total = 1 << n
    print(f"{ckpt}: {n} players {list(players.names)}; {len(log)} of {total} already in {log_path}")
    todo = [k for k in [0, total - 1, *prefix_order(n)] if k not in cached.store]
    if args.limit is not None:
        todo = todo[: args.limit]
    t0 = time.perf_counter()
    done = 0
    from tqdm.auto import tqdm

    with tqdm(total=len(todo), unit="eval", file=sys.stderr) as bar:
        for start in range(0, len(todo), args.chunk):
            chunk = todo[start : start + args.chunk]
            cached.values(chunk)
            done += len(chunk)
            bar.update(len(chunk))
    secs = time.perf_counter() - t0
    log.close()
    if done:
        print(
            f"evaluated {done} coalitions in {secs:.1f} s ({secs / done:.3f} s each; "
            f"{evaluator.layer_passes} layer passes, {args.threads} threads)"
        )
    missing = [k for k in range(total) if k not in cached.store]
    if missing:
        print(f"{len(missing)} coalitions still missing; rerun to resume")
        return
    tables = {m: [cached.store[k][m] for k in range(total)] for m in METRIC_NAMES}
    doc = {
        "description": (
            f"all 2^{n} coalitions of the query/value adapters of {ckpt.name} "
            f"({record['task']}, {record['method']}, seed {record['seed']}) on the "
            f"{split_label} split; index = coalition bitmask, bit i = player i"
        ),
        "checkpoint_weights_sha256": weights_hash(ckpt),
        "task": record["task"],
        "task_variant": record["task_variant"],
        "split": split_label,
        "method": record["method"],
        "player_names": list(players.names),
        "values": tables,
    }
    out = (
        Path(args.out) if args.out else HERE / "data" / f"shapley_table_{record['task']}_qv{n}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(doc) + "\n")
    phi = shapley_from_table(np.asarray(tables["logprob"]))
    print(f"wrote {out}; exact logprob Shapley values:")
    for name, v in zip(players.names, phi, strict=True):
        print(f"  {name:45s} {v:+.5f}")
    gain = tables["logprob"][-1] - tables["logprob"][0]
    print(f"sum {phi.sum():+.5f} = v(N) - v(empty) = {gain:+.5f}")
    print("rerun: python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]))
    print(f"next:  python benchmarks/bench_shapley_estimators.py --table {out} --metric logprob")


def open_game(
    ckpt: Path, kinds: tuple[str, ...], split: str, docs: int | None, threads: int
) -> tuple[Any, Any, dict[str, Any], Any, str, str]:
    """The pieces of a module-player adapter game of ``ckpt``: ``(adapter restricted to the
    modules of ``kinds``, task (its first ``docs`` documents), the run record, players, split
    label, log fingerprint)``; torch set to ``threads`` threads, offline."""
    import torch

    from coto_tools.train import load_run

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    adapter, task, record = load_run(ckpt)
    modules = [m for m in adapter.modules if _kind(m) in kinds]
    players = make_players(modules, "module")
    split_label = split if docs is None else f"{split}[:{docs}]"
    if docs is not None:
        task = first_docs(task, docs)
    fp = game_fingerprint(
        weights=weights_hash(ckpt),
        task=record["task"],
        task_variant=record["task_variant"],
        split=split_label,
        players=players,
        metrics=METRIC_NAMES,
    )
    return adapter.subset(modules), task, record, players, split_label, fp


def first_docs(task: Any, docs: int) -> Any:
    """The same task restricted to the first ``docs`` documents of each split (one batch; its
    :meth:`encoded` too, for a prompt task): an instance of a subclass of the task's own class,
    so class-level checks still see it."""
    cls = type(task)

    class FirstDocs(cls):  # type: ignore[misc, valid-type]
        def batches(self, split: str, batch_size: int = 64) -> list[Any]:
            return cls.batches(self, split, docs)[:1]

        def encoded(self, split: str) -> Any:  # what document_batches() deals out
            from coto_tools.tasks.prompt_head import EncodedSplit

            enc = cls.encoded(self, split)
            return EncodedSplit(enc.input_ids[:docs], enc.attention_mask[:docs], enc.labels[:docs])

    FirstDocs.__name__ = cls.__name__
    clone = object.__new__(FirstDocs)
    clone.__dict__.update(task.__dict__)
    return clone


def _kind(module: str) -> str | None:
    from coto_tools.adapters.keys import parse_module_name

    return parse_module_name(module).kind


if __name__ == "__main__":
    main()
