"""The exact ``coto-tools`` commands that rerun each piece of a reproduction.

Paths are written as ``DIR/...`` with ``DIR`` the reproduction's output directory as given.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from coto_tools.reproduce.stage import read_json
from coto_tools.train.config import TrainConfig

# TrainConfig fields -> the train command's flags (task_variant handled separately)
_TRAIN_FLAGS = {
    "method": "--method",
    "seed": "--seed",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "lr_schedule": "--lr-schedule",
    "lr_floor": "--lr-floor",
    "warmup_ratio": "--warmup-ratio",
    "weight_decay": "--weight-decay",
    "rank": "--rank",
    "alpha": "--alpha",
    "schedule": "--schedule",
    "stage1_ratio": "--stage1-ratio",
    "p_start": "--p-start",
    "group": "--group",
    "lora_dropout": "--lora-dropout",
    "eval_split": "--eval-split",
}


def _q(parts: Sequence[Any]) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts)


def train_command(config: Mapping[str, Any], out: str) -> str:
    """``coto-tools train ...`` for a run's recorded config (every hyperparameter explicit)."""
    cfg = TrainConfig.from_dict(config).as_dict()
    variant = dict(cfg.get("task_variant") or {})
    shots = variant.pop("shots", None)
    parts: list[Any] = ["coto-tools", "train", "--task", task_spec(cfg["task"], variant)]
    for field, flag in _TRAIN_FLAGS.items():
        parts += [flag, cfg[field]]
    if cfg.get("targets"):
        parts += ["--targets", ",".join(cfg["targets"])]
    if cfg.get("dtype"):  # only when not float32 (TrainConfig.as_dict leaves the default out)
        parts += ["--dtype", cfg["dtype"]]
    if shots is not None:
        parts += ["--shots", shots]
    parts += ["--out", out]
    return _q(parts)


def task_spec(name: str, variant: Mapping[str, Any]) -> str:
    """``NAME`` or ``NAME:{JSON options}``, the task spec every command's ``--task`` takes."""
    from coto_tools.tasks import task_spec as spec

    return spec(name, variant)


def merge_command(
    inputs: Sequence[str], row: Mapping[str, Any], out: str, task: str, split: str
) -> str:
    """``coto-tools merge ... --eval``: the merge, then its evaluation on ``task``."""
    parts: list[Any] = ["coto-tools", "merge", *inputs, "--method", row["merge_method"]]
    parts += ["--space", row["space"], "--weights", ",".join(f"{w:.10g}" for w in row["weights"])]
    if row.get("density") is not None:
        parts += ["--density", row["density"]]
    parts += ["--out", out, "--eval", "--task", task, "--split", split]
    return _q(parts)


def param_average_comment(
    inputs: Sequence[str], row: Mapping[str, Any], task: str, split: str
) -> str:
    """The plain parameter average has no ``merge`` method: for two inputs, ``coto-tools lmc``
    in factor space evaluates it as the point ``a = w_2`` of the path (a comment line)."""
    w = row["weights"]
    if len(inputs) == 2:
        from fractions import Fraction

        points = Fraction(w[1]).limit_denominator(12).denominator + 1  # a = w_2 on the grid
        how = _q(
            ["coto-tools", "lmc", *inputs, "--space", "factor", "--points", points,
             "--split", split]
        )  # fmt: skip
        return (
            f"# {row['name']}: plain parameter average (A, B averaged, weights "
            f"{', '.join(f'{x:.4g}' for x in w)}) = the factor-space LMC point a = {w[1]:.4g}: "
            f"{how}  (task {task})"
        )
    return (
        f"# {row['name']}: plain parameter average of {len(inputs)} adapters (A, B averaged): "
        "coto_tools.lmc.space.interpolate_factors(adapters, weights), evaluated on "
        f"{task} {split}"
    )


def prune_command(
    checkpoints: Sequence[str], split: str, out: str, strategies: Sequence[str] | None = None
) -> str:
    parts = [
        "coto-tools",
        "prune",
        *checkpoints,
        "--split",
        split,
        "--metric",
        "accuracy",
        *(["--strategies", ",".join(strategies)] if strategies else []),
        "--no-curves",
        "--no-rank-sweep",
        "--out",
        out,
    ]
    return _q(parts)


def shapley_command(checkpoints: Sequence[str], key: Mapping[str, Any], out: str) -> str:
    parts = [
        "coto-tools",
        "shapley",
        *checkpoints,
        "--players",
        key["players"],
        "--metric",
        key["metric"],
        "--estimator",
        key["estimator"],
        "--split",
        key["split"],
        "--out",
        out,
    ]
    if key.get("interactions"):
        parts.append("--interactions")
    return _q(parts)


def lmc_command(
    pairs: Sequence[tuple[str, str]], labels: Sequence[str], points: int, split: str, out: str
) -> str:
    parts: list[Any] = ["coto-tools", "lmc"]
    for a, b in pairs:
        parts += ["--pair", a, b]
    for lab in labels:
        parts += ["--label", lab]
    parts += ["--points", points, "--space", "both", "--split", split, "--out", out]
    return _q(parts)


def rerun_commands(d: Mapping[str, Any]) -> list[str]:
    """Exact commands (paths relative to where the reproduction was started)."""
    meta, s, done = d["meta"], d["summaries"], d["done"]
    out_dir = meta.get("out", str(d["root"]))
    lines = [f"# everything: {meta.get('command', '')}"]
    runs = (done.get("train") or {}).get("runs", {})
    for r in runs.values():
        rec = d["root"] / r["dir"] / "coto.json"
        if rec.is_file():
            cfg = read_json(rec, required={"config": dict})["config"]
            lines.append(train_command(cfg, f"{out_dir}/{r['dir']}"))
    main = [f"{out_dir}/{r['dir']}" for r in runs.values() if r["role"] == "main"]
    run_path = {n: f"{out_dir}/{r['dir']}" for n, r in runs.items()}
    main_spec = task_spec(meta["task"], (meta.get("preset") or {}).get("task_variant") or {})
    for st in ("merge", "cross"):
        rows = (s.get(st) or {}).get("merges", [])
        for row in rows:
            if st == "cross" and row["eval_task"] != s["cross"]["tasks"][0]:
                continue  # one merge command per merge, evaluated on the first task
            spec = main_spec if st == "merge" else row.get("eval_task_spec", row["eval_task"])
            if st == "cross":
                other = next(
                    (
                        r.get("eval_task_spec", r["eval_task"])
                        for r in rows
                        if r["name"] == row["name"] and r["eval_task"] != row["eval_task"]
                    ),
                    "",
                )
                lines.append(f"# {row['name']}: for the second task rerun with --task {other}")
            out = f"{out_dir}/{st}/adapters/{row['name']}"
            runs_in = [run_path[n] for n in row["runs"]]
            if row["merge_method"] == "param-average":
                lines.append(param_average_comment(runs_in, row, spec, s[st]["split"]))
                continue
            lines.append(merge_command(runs_in, row, out, spec, s[st]["split"]))
    if "prune" in s:
        from coto_tools.prune.strategies import DEFAULT_STRATEGIES  # the command's default

        chosen = ((done.get("prune") or {}).get("key") or {}).get("strategies")
        restricted = chosen if chosen and tuple(chosen) != DEFAULT_STRATEGIES else None
        lines.append(prune_command(main, s["prune"]["split"], f"{out_dir}/prune", restricted))
    if "shapley" in s:
        lines.append(
            shapley_command(main, s["shapley"], f"{out_dir}/shapley")
            + "  # per-run outputs go to each run's shapley/"
        )
    if "lmc" in s and "pairs" in s["lmc"]:
        by_seed = {
            (r["method"], int(r["seed"])): run_path[n]
            for n, r in runs.items()
            if r["role"] == "main"
        }
        pairs = [
            (by_seed[(p["method"], p["seeds"][0])], by_seed[(p["method"], p["seeds"][1])])
            for p in s["lmc"]["pairs"]
        ]
        lines.append(
            lmc_command(
                pairs,
                [p["label"] for p in s["lmc"]["pairs"]],
                s["lmc"]["points"],
                s["lmc"]["split"],
                f"{out_dir}/lmc",
            )
        )
    return lines
