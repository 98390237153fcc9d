"""Cost of one evaluation and zero-shot accuracy of the BBC tasks.

Rerun: python benchmarks/bench_bbc_eval.py [--threads N] [--coalitions]
Prints: wall time of one evaluation of bbc-topic's eval / quick split (base model, and with an
18-module adapter at gate 1 through the Evaluator), zero-shot eval accuracy for prompts
plain/letters and text headline+lead/headline/lead, and (--coalitions) the prefix-reuse cost of
all 64 layer coalitions against 64 full passes.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from coto_tools.adapters.lora import LoraAdapter, LoraModule  # noqa: E402
from coto_tools.adapters.players import make_players  # noqa: E402
from coto_tools.runtime.evaluator import Evaluator  # noqa: E402
from coto_tools.tasks import get_task  # noqa: E402
from coto_tools.tasks.catalog import zero_shot_metrics  # noqa: E402


def random_adapter(model: torch.nn.Module, targets: list[str]) -> LoraAdapter:
    g = torch.Generator().manual_seed(0)
    mods = {}
    for t in targets:
        lin = model.get_submodule(t)
        mods[t] = LoraModule(
            A=torch.randn(8, lin.in_features, generator=g) * 0.02,
            B=torch.randn(lin.out_features, 8, generator=g) * 0.02,
            alpha=16.0,
        )
    return LoraAdapter(mods)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--coalitions", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    task = get_task("bbc-topic")
    model = task.build_model()
    adapter = random_adapter(model, task.default_targets())
    for split in ("quick", "eval"):
        task.batches(split)  # tokenise outside the timing
        with torch.inference_mode():
            t, c = time.perf_counter(), time.process_time()
            for b in task.batches(split):
                task.logits(model, b)
            base, base_cpu = time.perf_counter() - t, time.process_time() - c
        ev = Evaluator(task, adapter, split=split, model=model, reuse_prefix=False)
        t, c = time.perf_counter(), time.process_time()
        ev.value({m: 1.0 for m in adapter.names})
        full, full_cpu = time.perf_counter() - t, time.process_time() - c
        ev.close()
        print(f"bbc-topic {split} ({len(task.encoded(split))} docs, 64 tokens): "
              f"base {base:.2f} s wall / {base_cpu:.2f} s CPU, "
              f"18 adapters on {full:.2f} s wall / {full_cpu:.2f} s CPU")  # fmt: skip
    for opts in ({}, {"prompts": "letters"}, {"text": "headline"}, {"text": "lead"},
                 {"text": "headline", "prompts": "letters"}):  # fmt: skip
        m = zero_shot_metrics(get_task("bbc-topic", **opts))
        print(f"zero-shot bbc-topic {opts or 'default'}: accuracy {m.accuracy:.4f}, "
              f"logprob {m.logprob:.4f} (n={m.n})")  # fmt: skip
    for name in ("bbc-a", "bbc-b"):
        m = zero_shot_metrics(get_task(name))
        print(f"zero-shot {name}: accuracy {m.accuracy:.4f} (n={m.n})")
    if args.coalitions:
        players = make_players(adapter.names, "layer")
        masks = [np.array([(i >> j) & 1 for j in range(6)], dtype=bool) for i in range(64)]
        ev = Evaluator(task, adapter, split="eval", model=model)
        t, c = time.perf_counter(), time.process_time()
        ev.value_batch([ev.mask_config(players, m) for m in masks])
        print(f"64 layer coalitions with prefix reuse: {time.perf_counter() - t:.1f} s wall / "
              f"{time.process_time() - c:.1f} s CPU, "
              f"{ev.layer_passes} layer passes (full passes: {64 * 6})")  # fmt: skip


if __name__ == "__main__":
    main()
