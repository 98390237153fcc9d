"""Training length by the plateau rule (coto_tools.tasks.presets.PlateauRule), for LoRA and CoTo
alike: train both methods at each candidate number of steps and report whether each run's
training loss has plateaued, and the CPU time per step.

Only training losses are recorded: the rule never sees an evaluation, so it cannot pick the
length at which one method wins. The preset trains the fewest candidate steps at which every
run plateaued.

Rerun (one torch thread; the numbers in coto_tools/reproduce/config.py came from these):
    python benchmarks/bench_plateau.py --preset quick --steps 40 80 120 160 --seeds 0 1
    python benchmarks/bench_plateau.py --preset default --steps 80 120 160 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from coto_tools.adapters.atomic import atomic_write_text  # noqa: E402
from coto_tools.reproduce.config import ReproduceConfig  # noqa: E402
from coto_tools.tasks import get_task  # noqa: E402
from coto_tools.tasks.presets import PLATEAU  # noqa: E402
from coto_tools.train import train  # noqa: E402
from coto_tools.train.config import Method  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("quick", "default"), default="quick")
    ap.add_argument("--task", default="bbc-topic")
    ap.add_argument("--steps", type=int, nargs="+", default=[40, 80, 120, 160])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = a.out or Path(__file__).parent / "results" / f"plateau_{a.task}_{a.preset}.json"
    data: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    preset = ReproduceConfig(out=Path("unused"), task=a.task, quick=a.preset == "quick").preset()
    task = None
    for steps in a.steps:
        for seed in a.seeds:
            for method in (Method.lora, Method.coto):
                key = f"T{steps}|{method.value}|s{seed}"
                if key in data["runs"]:
                    continue
                cfg = preset.train_config(
                    ReproduceConfig(out=Path("unused"), task=a.task).main_task, method, seed
                )
                from dataclasses import replace

                cfg = replace(cfg, steps=steps)
                if task is None:
                    task = get_task(cfg.task, **dict(cfg.task_variant))
                c0, t0 = cpu_s(), time.perf_counter()
                res = train(cfg, task=task, progress=False)
                losses = [r.loss for r in res.log]
                data["runs"][key] = {
                    "steps": steps,
                    "method": method.value,
                    "seed": seed,
                    "batch_size": cfg.batch_size,
                    "lr": cfg.lr,
                    "variant": dict(cfg.task_variant),
                    "losses": losses,
                    "cpu_s": round(cpu_s() - c0, 2),
                    "wall_s": round(time.perf_counter() - t0, 2),
                    "plateau": PLATEAU.terms(losses),
                }
                out.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(out, json.dumps(data, indent=1) + "\n", force=True)
                t = data["runs"][key]["plateau"]
                print(
                    f"{key}: fall {t['fall']:.4f} tol {t['tol']:.4f} "
                    f"{'plateaued' if t['fall'] <= t['tol'] else 'still falling'}; "
                    f"cpu {data['runs'][key]['cpu_s']} s, wall {data['runs'][key]['wall_s']} s",
                    flush=True,
                )
    curves: dict[int, dict[str, list[list[float]]]] = {}
    for r in data["runs"].values():
        curves.setdefault(r["steps"], {}).setdefault(r["method"], []).append(r["losses"])
    chosen = PLATEAU.choose(curves)
    print(f"rule: {PLATEAU.describe()}")
    print(f"chosen steps for {a.task} {a.preset}: {chosen}")
    print(f"command: python benchmarks/bench_plateau.py --preset {a.preset} --steps "
          f"{' '.join(map(str, a.steps))} --seeds {' '.join(map(str, a.seeds))}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
