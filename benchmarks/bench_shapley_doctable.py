"""Benchmark: tabulate a real 12-player adapter game *per document* (all 4,096 coalitions).

As bench_shapley_real.py (players: the query and value adapters of the 6 layers; the key
adapters stay off; the task's ``quick`` split, first ``--docs`` documents), but every coalition's
log-probability of the gold label is kept for each document, not only their mean. Such a table
lets the estimators that sample the documents too (``stratified`` with document groups,
:mod:`coto_tools.shapley.documents`) be compared with the whole-split ones on the same game:
the value of a group of documents is the mean of its documents' entries, the whole game's the
mean of all.

Written to ``--out`` (safetensors): ``logprob (4096, docs)`` float64 indexed by coalition bitmask
(bit ``i`` = player ``i``), ``labels (docs,)``; metadata: player names, checkpoint hash, split,
time taken.

Run:  python benchmarks/bench_shapley_doctable.py --checkpoint DIR --out FILE.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_shapley_real import open_game, prefix_order  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--docs", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    from safetensors.numpy import save_file

    from coto_tools.runtime.evaluator import Evaluator
    from coto_tools.shapley.game_adapter import weights_hash

    ckpt = Path(args.checkpoint)
    adapter, task, record, players, split_label, _ = open_game(
        ckpt, ("q", "v"), "quick", args.docs, args.threads
    )
    n = len(players)
    ev = Evaluator(task, adapter, split="quick", batch_size=args.docs, logits_cache=0)
    table = np.empty((1 << n, args.docs))
    t0, c0 = time.perf_counter(), time.process_time()
    keys = [0, *prefix_order(n), (1 << n) - 1]
    for k, key in enumerate(keys):
        mask = [(key >> i) & 1 == 1 for i in range(n)]
        per = ev.metrics_per_example(ev.mask_config(players, mask))
        table[key] = per.true_logprob
        if k % 512 == 0:
            print(f"{k}/{len(keys)} {time.perf_counter() - t0:.0f} s", flush=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    labels = ev.labels.numpy().astype(np.int64)
    meta = {
        "description": (
            f"per-document log-probability of the gold label, all 2^{n} coalitions of the "
            f"query/value adapters of {ckpt.name} on {split_label}; row = coalition bitmask"
        ),
        "checkpoint_weights_sha256": weights_hash(ckpt),
        "task": record["task"],
        "method": record["method"],
        "seed": record["seed"],
        "split": split_label,
        "player_names": list(players.names),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "threads": args.threads,
    }
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    save_file(
        {"logprob": table, "labels": labels}, str(tmp), metadata={"coto_bench": json.dumps(meta)}
    )
    os.replace(tmp, out)
    print(f"wrote {out}: {wall:.0f} s wall, {cpu:.0f} s CPU")


if __name__ == "__main__":
    main()
