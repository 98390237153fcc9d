"""Headroom of BBC task variants: zero-shot vs trained accuracy, pruning and merging probes.

For each candidate task variant and each method (``lora``, ``coto``; identical hyperparameters)
one short training run per seed (``coto_tools.train.train``) is measured on the ``--split``
(default ``eval``, 400 documents):

- zero-shot and trained accuracy / mean log-prob of the true label;
- pruning probe: accuracy with only the even layers' adapters kept (``everyother-even``), and
  the odd ones (``everyother-odd``);
- merge probe (``--merge``, candidates with >= 2 seeds): the 1:1 factor-space linear merge
  (PEFT ``linear``: ``A``, ``B`` averaged with weight sqrt(1/2 * scaling)) of seeds 1 and 2
  of the same method.

Results are appended to ``--out`` (JSON) after every run, so an interrupted run loses nothing
and a rerun skips what is already there (key: candidate, lr, method, seed, steps, batch,
max tokens); the trained adapters are kept under ``--runs`` for the merge probe.

Selection rule (``coto_tools.tasks.presets.HeadroomRule``; fixed before any LoRA-vs-CoTo
comparison; it uses both methods symmetrically):
per candidate, with each number averaged over the seeds measured,

- ``gain_min = min over methods (trained - zero-shot)``   (room for adapters to matter)
- ``top = max over methods trained``                      (distance from the ceiling)
- ``prune_drop = max over methods (trained - everyother-even)`` (pruning has an effect)

eligible: ``gain_min >= 0.10`` and ``top <= 0.95`` and ``prune_drop >= 0.02``; pick the
eligible candidate with the largest ``gain_min``; candidates within 0.02 of that are tied and
the tie goes to the lowest ``top``. No eligible candidate: the largest ``gain_min`` (said so).

This rule picks the task variant; the number of training steps is set afterwards by the
plateau rule (``benchmarks/bench_plateau.py``, ``coto_tools.tasks.presets.PlateauRule``), which
reads training losses only, for both methods alike.

Rerun (the default preset's numbers in coto_tools/tasks/presets.py came from):
    python benchmarks/bench_presets.py --seeds 1 --steps 120 --batch-size 16 --max-tokens 48
    python benchmarks/bench_presets.py --candidates <two best> --seeds 1 2 --merge
    python benchmarks/bench_presets.py --report
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from coto_tools.adapters import load_adapter, save_adapter  # noqa: E402
from coto_tools.adapters.atomic import atomic_write_text  # noqa: E402
from coto_tools.runtime.evaluator import Evaluator  # noqa: E402
from coto_tools.tasks import get_task  # noqa: E402
from coto_tools.tasks.presets import RULE  # noqa: E402
from coto_tools.train import TrainConfig, train  # noqa: E402

# Every option spelled out (the package default, bbc.DEFAULT_VARIANT, is itself a result of this
# benchmark); max_tokens comes from --max-tokens.
_PLAIN = {"text": "headline+lead", "prompts": "plain", "shots": None}
CANDIDATES: dict[str, dict[str, Any]] = {
    "a-full-plain": _PLAIN,
    "b-shots8-plain": {**_PLAIN, "shots": 8},
    "c-shots16-plain": {**_PLAIN, "shots": 16},
    "d-full-letters": {**_PLAIN, "prompts": "letters"},
    "e-shots16-letters": {**_PLAIN, "prompts": "letters", "shots": 16},
    "f-shots16-headline": {**_PLAIN, "text": "headline", "shots": 16},
}
METHODS = ("lora", "coto")


def run_key(cand: str, lr: float, method: str, seed: int, a: argparse.Namespace) -> str:
    return f"{cand}|lr={lr:g}|{method}|s{seed}|T{a.steps}|b{a.batch_size}|tok{a.max_tokens}"


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text()) if path.is_file() else {"runs": {}, "merges": {}}
    for r in data["runs"].values():  # spell every option out (older records omitted defaults)
        r["variant"] = dict(CANDIDATES[r["candidate"]], max_tokens=r["variant"]["max_tokens"])
    return data


def store(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def m2d(m: Any) -> dict[str, float]:
    return {"accuracy": m.accuracy, "logprob": m.logprob, "n": m.n}


def prune_probe(task: Any, adapter: Any, split: str) -> dict[str, dict[str, float]]:
    from coto_tools.prune import select_strategy

    ev = Evaluator(task, adapter, split=split)
    try:
        out = {}
        for s in ("everyother-even", "everyother-odd"):
            keep = select_strategy(adapter.modules, s)
            out[s] = m2d(ev.value(dict.fromkeys(keep, 1.0)))
        return out
    finally:
        ev.close()


def do_runs(a: argparse.Namespace, data: dict[str, Any]) -> None:
    for cand in a.candidates:
        variant = dict(CANDIDATES[cand], max_tokens=a.max_tokens)
        task = get_task("bbc-topic", **variant)
        for seed in a.seeds:
            for method in METHODS:
                key = run_key(cand, a.lr, method, seed, a)
                if key in data["runs"]:
                    continue
                cfg = TrainConfig(
                    task="bbc-topic",
                    method=method,
                    seed=seed,
                    task_variant=variant,
                    steps=a.steps,
                    batch_size=a.batch_size,
                    lr=a.lr,
                    eval_split=a.split,
                )
                t0 = time.perf_counter()
                res = train(cfg, task=task, progress=False)
                probe = prune_probe(task, res.adapter, a.split)
                save_adapter(
                    res.adapter, a.runs / f"{key.replace('|', '_')}.safetensors", force=True
                )
                data["runs"][key] = {
                    "candidate": cand,
                    "variant": variant,
                    "method": method,
                    "seed": seed,
                    "lr": a.lr,
                    "steps": a.steps,
                    "batch_size": a.batch_size,
                    "split": a.split,
                    "train_size": task.train_size(),
                    "zero_shot": m2d(res.zero_shot),
                    "trained": m2d(res.metrics),
                    "prune": probe,
                    "train_loss_last10pct": res.record["train_loss_last10pct"],
                    "step_time_s": res.record["step_time_s"],
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
                store(a.out, data)
                print(
                    f"{key}: zs {res.zero_shot.accuracy:.3f} trained {res.metrics.accuracy:.3f} "
                    f"even {probe['everyother-even']['accuracy']:.3f} "
                    f"odd {probe['everyother-odd']['accuracy']:.3f} "
                    f"({time.perf_counter() - t0:.0f}s, {res.record['step_time_s']:.2f}s/step)",
                    flush=True,
                )


def do_merges(a: argparse.Namespace, data: dict[str, Any]) -> None:
    from coto_tools.merge import MergeConfig, merge_adapters

    for cand in a.candidates:
        variant = dict(CANDIDATES[cand], max_tokens=a.max_tokens)
        task = get_task("bbc-topic", **variant)
        for method in METHODS:
            key = run_key(cand, a.lr, method, 0, a).replace("|s0|", "|s1+s2|")
            k1, k2 = (run_key(cand, a.lr, method, s, a) for s in (1, 2))
            if key in data["merges"] or k1 not in data["runs"] or k2 not in data["runs"]:
                continue
            ads = [load_adapter(a.runs / f"{k.replace('|', '_')}.safetensors") for k in (k1, k2)]
            merged = merge_adapters(ads, MergeConfig(method="linear", space="factor")).adapter
            ev = Evaluator(task, merged, split=a.split)
            try:
                m = ev.value(dict.fromkeys(merged.modules, 1.0))
            finally:
                ev.close()
            data["merges"][key] = {"candidate": cand, "method": method, "lr": a.lr, **m2d(m)}
            store(a.out, data)
            print(f"{key}: factor merge {m.accuracy:.3f}", flush=True)


def summarise(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per setting (candidate, lr, steps, ...): means over seeds per method, in the row format
    of ``coto_tools.tasks.presets.MEASURED``, plus the rule's terms."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for key, r in data["runs"].items():
        setting = key.replace(f"|{r['method']}|s{r['seed']}|", "|")
        groups.setdefault(setting, {}).setdefault(r["method"], []).append(r)
    out = {}
    for setting, by_m in sorted(groups.items()):
        if set(by_m) != set(METHODS):
            continue
        first = by_m["lora"][0]
        seeds = sorted({r["seed"] for rs in by_m.values() for r in rs})
        row: dict[str, Any] = {
            "variant": first["variant"],
            "lr": first["lr"],
            "steps": first["steps"],
            "batch_size": first["batch_size"],
            "train_docs": first["train_size"],
            "seeds": seeds,
            "n": first["zero_shot"]["n"],
            "zero_shot": round(first["zero_shot"]["accuracy"], 4),
            "zero_shot_logprob": round(first["zero_shot"]["logprob"], 4),
        }
        for m, rs in by_m.items():

            def mean(f: Any, rs: list[dict[str, Any]] = rs) -> float:
                return round(sum(f(r) for r in rs) / len(rs), 4)

            mk = setting.replace("|T", f"|{m}|s1+s2|T", 1)
            row[m] = {
                "accuracy": mean(lambda r: r["trained"]["accuracy"]),
                "logprob": mean(lambda r: r["trained"]["logprob"]),
                "even": mean(lambda r: r["prune"]["everyother-even"]["accuracy"]),
                "odd": mean(lambda r: r["prune"]["everyother-odd"]["accuracy"]),
                "per_seed": [round(r["trained"]["accuracy"], 4) for r in rs],
                "merge": (
                    round(data["merges"][mk]["accuracy"], 4) if mk in data["merges"] else None
                ),
            }
        row.update({k: round(v, 4) for k, v in RULE.terms(row).items()})
        row["eligible"] = RULE.eligible(row)
        out[setting] = row
    return out


def report(a: argparse.Namespace, data: dict[str, Any]) -> str:
    rows = summarise(data)
    pick, ok = RULE.choose(rows) if rows else (None, False)
    note = "eligible" if ok else "no candidate eligible: largest gain_min"
    data["summary"] = rows
    data["choice"] = {"setting": pick, "note": note, "rule": RULE.describe()}
    store(a.out, data)
    lines = [
        "# BBC task variants: headroom (benchmarks/bench_presets.py)",
        "",
        f"Generated {datetime.date.today().isoformat()}; accuracy on the eval split (400 docs, "
        "SE about 0.02); `lp` = mean log-prob of the true label; even/odd = only the even/odd "
        "layers' adapters kept; merge = 1:1 factor-space merge of seeds 1 and 2.",
        "",
        f"Rule (fixed before comparing methods): {RULE.describe()}.",
        "",
        "| setting | train docs | zero-shot acc / lp | LoRA acc / lp | CoTo acc / lp | "
        "LoRA even / odd | CoTo even / odd | LoRA merge | CoTo merge | gain_min | eligible |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, r in rows.items():
        lo, co = r["lora"], r["coto"]

        def mg(m: dict[str, Any]) -> str:
            return "-" if m["merge"] is None else f"{m['merge']:.3f}"

        lines.append(
            f"| {s.replace('|', ' ')} (seeds {r['seeds']}) | {r['train_docs']} | "
            f"{r['zero_shot']:.3f} / "
            f"{r['zero_shot_logprob']:.3f} | {lo['accuracy']:.3f} / {lo['logprob']:.3f} | "
            f"{co['accuracy']:.3f} / {co['logprob']:.3f} | {lo['even']:.3f} / {lo['odd']:.3f} | "
            f"{co['even']:.3f} / {co['odd']:.3f} | {mg(lo)} | {mg(co)} | {r['gain_min']:.3f} | "
            f"{'yes' if r['eligible'] else 'no'} |"
        )
    lines += ["", f"Choice: {pick and pick.replace('|', ' ')} ({note})."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(a.out.with_suffix(".md"), text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--split", default="eval", choices=["eval", "quick"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--merge", action="store_true", help="also the 1:1 factor merge of seeds 1+2")
    ap.add_argument("--report", action="store_true", help="only (re)write the summary and .md")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/presets.json"))
    ap.add_argument("--runs", type=Path, default=Path("/tmp/coto_presets_runs"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.runs.mkdir(parents=True, exist_ok=True)
    data = load(a.out)
    data.setdefault("commands", []).append(
        {"argv": "python " + " ".join(sys.argv), "date": datetime.datetime.now().isoformat()}
    )
    if not a.report:
        do_runs(a, data)
        if a.merge:
            do_merges(a, data)
    print(report(a, data))


if __name__ == "__main__":
    main()
