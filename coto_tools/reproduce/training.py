"""The training stage: LoRA and CoTo runs with the same hyperparameters and seeds.

Each run is a run directory ``DIR/train/<task>-<method>-s<seed>/`` of ``coto-tools train``
(written atomically by :func:`~coto_tools.train.save_run`). A run directory that exists with the
same training config is reused, never retrained; one with a different config is refused (use
another ``--out``, or ``--force``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coto_tools.errors import OptionError
from coto_tools.reproduce.config import METHODS, Preset, ReproduceConfig, TaskSpec, run_name
from coto_tools.reproduce.stage import Stage, run_fingerprint, say, write_json
from coto_tools.reproduce.workbench import Workbench
from coto_tools.train import TrainConfig, read_record, save_run
from coto_tools.train import loop as train_loop
from coto_tools.train.run import LOG_FILE


@dataclass(frozen=True)
class Run:
    """One finished training run and the facts later stages need."""

    name: str
    dir: Path
    role: str
    task: TaskSpec
    method: str
    seed: int
    fingerprint: str
    metrics: dict[str, float]
    zero_shot: dict[str, float]
    wall_time_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dir": f"{self.dir.parent.name}/{self.dir.name}",  # relative to DIR
            "role": self.role,
            "task": self.task.as_dict(),
            "method": self.method,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "metrics": self.metrics,
            "zero_shot": self.zero_shot,
            "wall_time_s": self.wall_time_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], root: Path) -> Run:
        return cls(
            name=d["name"],
            dir=Path(root) / d["dir"],
            role=d["role"],
            task=TaskSpec(d["task"]["name"], d["task"]["variant"]),
            method=d["method"],
            seed=int(d["seed"]),
            fingerprint=d["fingerprint"],
            metrics=d["metrics"],
            zero_shot=d["zero_shot"],
            wall_time_s=float(d["wall_time_s"]),
        )


def planned_runs(config: ReproduceConfig, preset: Preset) -> list[tuple[str, str, TrainConfig]]:
    """``(run name, role, TrainConfig)`` of every run; role ``main`` (the main task's runs),
    ``cross0`` / ``cross1`` (the two cross tasks' runs)."""
    plan = []
    main = config.main_task
    for seed in range(preset.seeds):
        for m in METHODS:
            plan.append((run_name(main, m, seed), "main", preset.train_config(main, m, seed)))
    if preset.cross_tasks is not None:
        for i, t in enumerate(preset.cross_tasks):
            for seed in range(preset.cross_seeds):
                for m in METHODS:
                    cfg = preset.train_config(t, m, seed)
                    plan.append((run_name(t, m, seed), f"cross{i}", cfg))
    return plan


def _canonical(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, sort_keys=True))


def _reusable(run_dir: Path, cfg: TrainConfig, force: bool) -> bool:
    """True if ``run_dir`` holds this exact run; raise if it holds another (unless ``force``)."""
    if not (run_dir / "coto.json").is_file() or force:
        return False
    rec = read_record(run_dir)
    have, want = _canonical(rec["config"]), _canonical(cfg.as_dict())
    if have == want:
        return True
    diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    raise OptionError(
        f"{run_dir}: trained with other settings ({', '.join(diff)} differ); "
        "use another --out, or --force to retrain"
    )


def _run_of(name: str, run_dir: Path, role: str) -> Run:
    rec = read_record(run_dir)
    return Run(
        name=name,
        dir=run_dir,
        role=role,
        task=TaskSpec(str(rec["task"]), dict(rec["task_variant"])),
        method=str(rec["method"]),
        seed=int(rec["seed"]),
        fingerprint=run_fingerprint(run_dir),
        metrics=dict(rec.get("metrics") or {}),
        zero_shot=dict(rec.get("zero_shot") or {}),
        wall_time_s=float(rec.get("wall_time_s") or 0.0),
    )


def train_stage(
    config: ReproduceConfig,
    preset: Preset,
    *,
    progress: bool,
    counters: dict[str, int],
    bench: Workbench | None = None,
) -> dict[str, Run]:
    """Train (or reuse) every planned run; returns ``{run name: Run}``. The runs of one task
    share its task object, base model and zero-shot metrics (``bench``; see
    :mod:`~coto_tools.reproduce.workbench`)."""
    plan = planned_runs(config, preset)
    key = {"runs": {name: cfg.as_dict() for name, _, cfg in plan}}
    stage = Stage(config.out, "train", key, in_place=True)
    rec = stage.done() if not config.force else None
    if rec is not None and all((stage.dir / n / "coto.json").is_file() for n, _, _ in plan):
        say(f"train: {len(plan)} runs finished earlier, reused", progress=progress)
        counters["stages_skipped"] += 1
        return {n: Run.from_dict(d, config.out) for n, d in rec["runs"].items()}
    stage.start()
    todo = [(n, c) for n, _, c in plan if not _reusable(stage.dir / n, c, config.force)]
    say(
        f"train: {len(plan)} runs ({len(todo)} to train, {len(plan) - len(todo)} reused); "
        f"{preset.steps} steps, batch {preset.batch_size}, lr {preset.lr:g}",
        progress=progress,
    )
    bench = Workbench() if bench is None else bench
    for i, (name, cfg) in enumerate(todo, 1):
        say(f"train {i}/{len(todo)}: {name}", progress=progress)
        task = bench.get_task(cfg.task, **dict(cfg.task_variant))
        result = train_loop.train(
            cfg,
            task=task,
            model=bench.model(task),
            zero_shot=bench.zero_shot(task, cfg.eval_split),
            progress=progress,
        )
        bench.record_zero_shot(task, cfg.eval_split, result.zero_shot)
        counters["trained"] += 1
        save_run(result, stage.dir / name, force=True)
    runs = {name: _run_of(name, stage.dir / name, role) for name, role, _ in plan}
    write_json(stage.dir / CURVES_FILE, learning_curves(runs))
    from coto_tools.reproduce.figures import learning_curve_figure, save

    save(learning_curve_figure(read_curves(stage.dir)), stage.dir / CURVES_FIGURE)
    stage.commit(
        {
            "runs": {n: r.as_dict() for n, r in runs.items()},
            "summary": CURVES_FILE,
            "figures": [CURVES_FIGURE],
        }
    )
    counters["stages_run"] += 1
    return runs


CURVES_FILE = "learning_curves.json"
CURVES_FIGURE = "learning_curves.png"


def learning_curves(runs: Mapping[str, Run]) -> dict[str, Any]:
    """Every run's per-step training loss (from its ``train_log.csv``) and the plateau rule's
    terms (:class:`~coto_tools.tasks.presets.PlateauRule`): did its loss stop falling?"""
    from coto_tools.tasks.presets import PLATEAU

    out: dict[str, Any] = {"rule": PLATEAU.describe(), "runs": {}}
    for name, r in runs.items():
        with (r.dir / LOG_FILE).open(newline="") as fh:
            losses = [float(row["loss"]) for row in csv.DictReader(fh)]
        try:
            terms: dict[str, Any] = PLATEAU.terms(losses)
            terms["plateaued"] = terms["fall"] <= terms["tol"]
        except OptionError as exc:  # too few steps to judge
            terms = {"plateaued": None, "why": str(exc)}
        out["runs"][name] = {
            "method": r.method,
            "seed": r.seed,
            "role": r.role,
            "losses": losses,
            "plateau": terms,
        }
    return out


def read_curves(train_dir: Path) -> dict[str, Any]:
    from coto_tools.reproduce.stage import read_json

    data: dict[str, Any] = read_json(train_dir / CURVES_FILE)
    return data
