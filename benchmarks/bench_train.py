"""Step time of CoTo vs plain LoRA training (coto-tools' trainer, one training step each).

CoTo skips inactive adapters (no branch compute, no autograd graph), so its steps should be no
slower than LoRA's, and cheaper while p < 1 (backward stops at the lowest active layer only when
the base below needs no gradient). CoTo and LoRA steps are interleaved on the same batches so
that load from other processes hits both alike.

Rerun:  python benchmarks/bench_train.py --task bbc-topic --steps 20 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

from coto_tools.adapters.players import make_players
from coto_tools.runtime.gated import fresh_adapter, inject
from coto_tools.tasks import get_task
from coto_tools.train.loop import train_step
from coto_tools.train.sampler import EpochSampler
from coto_tools.train.schedule import CoToSchedule, sample_active


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="bbc-topic")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per p value and method")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    task = get_task(args.task)
    model = task.build_model()
    targets = task.default_targets()
    adapter = fresh_adapter(
        model,
        targets,
        rank=args.rank,
        alpha=2.0 * args.rank,
        generator=torch.Generator().manual_seed(0),
    )
    handle = inject(model, adapter, trainable=True)
    players = make_players(handle.modules_of(), "layer")
    opt = torch.optim.AdamW(handle.parameters(), lr=1e-4, weight_decay=0.0)
    sampler = EpochSampler(task.train_size(), args.batch_size, np.random.default_rng(args.seed))
    rng = np.random.default_rng(args.seed)
    all_on = np.ones(len(players), dtype=bool)

    def timed(mask: np.ndarray, batch) -> float:  # type: ignore[no-untyped-def]
        handle.set_gates(players.gates(mask))
        t0 = time.perf_counter()
        train_step(task, model, opt, batch)
        return time.perf_counter() - t0

    batch0 = task.train_batch(sampler.next())
    seq = int(next(iter(batch0.inputs.values())).shape[-1])
    for _ in range(2):  # warm-up (allocator, first-call overheads)
        timed(all_on, batch0)

    print(
        f"task {args.task}: batch {args.batch_size} x {seq} tokens, {len(targets)} adapters in "
        f"{len(players)} layer groups, rank {args.rank}, torch threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f}"
    )
    print(f"{'p':>6} {'coto ms':>9} {'lora ms':>9} {'ratio':>6} {'mean on':>8}")
    for p in (0.1, 0.325, 0.55, 0.775, 1.0):
        c, lo, on = [], [], []
        for _ in range(args.steps):
            b = task.train_batch(sampler.next())
            mask = sample_active(p, len(players), rng)
            on.append(mask.sum())
            c.append(timed(mask, b))
            lo.append(timed(all_on, b))
        mc, ml = statistics.median(c), statistics.median(lo)
        print(f"{p:6.3f} {1e3 * mc:9.1f} {1e3 * ml:9.1f} {mc / ml:6.3f} {np.mean(on):8.2f}")

    # A whole (short) default schedule: p from 0.1 to 1 at 75%, then 1.
    total = 2 * args.steps
    sched = CoToSchedule(total)
    c, lo = [], []
    for t in range(total):
        b = task.train_batch(sampler.next())
        c.append(timed(sched.sample(t, len(players), rng), b))
        lo.append(timed(all_on, b))
    print(
        f"full linear schedule over {total} steps: coto {1e3 * statistics.mean(c):.1f} ms/step, "
        f"lora {1e3 * statistics.mean(lo):.1f} ms/step, ratio {sum(c) / sum(lo):.3f}"
    )
    print("rerun: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
