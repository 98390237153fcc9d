"""``reproduce(config) -> ReproduceResult``: train LoRA and CoTo adapters alike, run every
analysis of the CoTo paper (arXiv 2506.05713) on them, and write the report.

Stages (each in ``DIR/<stage>/``, skipped on a rerun when finished with the same inputs):
train, single, merge, cross, shapley, prune, lmc (sharing tasks, base models and evaluations
through a :class:`~coto_tools.reproduce.workbench.Workbench`); then ``report.html``,
``report.md`` and ``claims.json`` in ``DIR`` (rebuilt on every call from the stages' outputs;
cheap). Evaluations run on ``config.executor`` (its ``device`` locally); training runs on the
CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coto_tools.adapters.outguard import check_output
from coto_tools.errors import OptionError
from coto_tools.reproduce.analyses import lmc_stage, main_runs, prune_stage, shapley_stage
from coto_tools.reproduce.config import Preset, ReproduceConfig
from coto_tools.reproduce.merging import cross_stage, merge_stage
from coto_tools.reproduce.report import META_FILE, build_report
from coto_tools.reproduce.stage import Stage, read_json, say, write_json
from coto_tools.reproduce.training import Run, train_stage
from coto_tools.reproduce.workbench import Workbench
from coto_tools.runtime.executor import local_device, local_dtype
from coto_tools.threads import cpu_time_s

META_FORMAT = "coto-tools/reproduce"


@dataclass(frozen=True)
class ReproduceResult:
    """What one call did: ``trained`` runs, ``evaluations`` requested from evaluators,
    stages run and skipped, and the report written."""

    out: Path
    report: Path
    claims: list[dict[str, Any]]
    trained: int
    evaluations: int
    stages_run: int
    stages_skipped: int
    wall_time_s: float
    counters: dict[str, int] = field(default_factory=dict)
    cpu_time_s: float = 0.0  # user + system of this process's threads (not Ray workers)


def command_line(config: ReproduceConfig, preset: Preset) -> str:
    parts = ["coto-tools", "reproduce", "--task", config.task, "--seeds", str(preset.seeds)]
    if config.quick:
        parts.append("--quick")
    if config.steps is not None:
        parts += ["--steps", str(config.steps)]
    if config.executor is not None and config.executor.device != "auto":
        parts += ["--device", config.executor.device]
    return " ".join([*parts, "--out", str(config.out)])


def single_stage(
    config: ReproduceConfig,
    preset: Preset,
    runs: Mapping[str, Run],
    *,
    progress: bool,
    counters: dict[str, int],
    bench: Workbench | None = None,
) -> dict[str, Any]:
    """Single-task accuracy and log-probability of every main run, and zero-shot (all measured
    by the trainer on the preset's split: no new evaluation)."""
    rs = main_runs(runs)
    key = {"split": preset.split, "inputs": {r.name: r.fingerprint for r in rs}}
    stage = Stage(config.out, "single", key)
    if (rec := stage.reused(force=config.force, progress=progress, counters=counters)) is not None:
        return rec
    work = stage.start()
    say("single: single-task accuracy of each adapter (from training records)", progress=progress)
    rows = [{"name": r.name, "method": r.method, "seed": r.seed, **r.metrics} for r in rs]
    zero_shot = rs[0].zero_shot if rs else {}
    summary = {"split": preset.split, "runs": rows, "zero_shot": zero_shot}
    write_json(work / "single.json", summary)
    from coto_tools.reproduce.figures import save, single_figure

    zs = zero_shot.get("accuracy")
    save(single_figure(rows, zs), work / "single.png")
    counters["stages_run"] += 1
    return stage.commit({"figures": ["single.png"], "summary": "single.json"})


def _device(config: ReproduceConfig) -> str:
    """Where the evaluations run, for ``reproduce.json`` (``cpu``, ``cuda``, ``ray:auto``...)."""
    from coto_tools.runtime.device import resolve_device

    ex = config.executor
    if ex is None:
        return "cpu"
    return str(resolve_device(ex.device)) if ex.is_local else f"ray:{ex.device}"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def reproduce(config: ReproduceConfig, *, progress: bool = True) -> ReproduceResult:
    """Run (or resume) a reproduction in ``config.out``; see the module docstring."""
    import torch

    t0, c0 = time.perf_counter(), cpu_time_s()
    preset = config.preset()
    out = config.out
    check_output(out, [], replaces=False)
    meta_path = out / META_FILE
    if out.is_dir() and not meta_path.is_file() and any(out.iterdir()):
        raise OptionError(
            f"--out {out}: a folder holding other files, not a coto-tools reproduction (no "
            f"{META_FILE}); choose a new or empty folder"
        )
    meta: dict[str, Any] = (
        read_json(meta_path, optional={"invocations": list}) if meta_path.is_file() else {}
    )
    out.mkdir(parents=True, exist_ok=True)
    if meta and (meta.get("task"), meta.get("quick")) != (config.task, config.quick):
        raise OptionError(
            f"{out}: holds a reproduction of task {meta.get('task')} (quick={meta.get('quick')}); "
            "use another --out"
        )
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    meta |= {
        "format": META_FORMAT,
        "task": config.task,
        "quick": config.quick,
        "out": str(out),
        "command": command_line(config, preset),
        "preset": preset.as_dict(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": _device(config),
        "loadavg_start": _loadavg(),
    }
    write_json(meta_path, meta)
    counters = {"trained": 0, "evaluations": 0, "stages_run": 0, "stages_skipped": 0}
    say(f"{config.task}: {preset.name} preset, {preset.seeds} seed(s) -> {out}", progress=progress)
    # tasks, base models and evaluations shared by the stages (evaluators on the device)
    bench = Workbench(device=local_device(config.executor), dtype=local_dtype(config.executor))
    kw: dict[str, Any] = {"progress": progress, "counters": counters, "bench": bench}
    try:
        runs = train_stage(config, preset, **kw)
        # Shapley before pruning: the layer coalitions pruning needs (all, none, everyother,
        # low, middle, high) are then already in the shared evaluator's cache
        for stage_fn in (
            single_stage, merge_stage, cross_stage, shapley_stage, prune_stage, lmc_stage
        ):  # fmt: skip
            stage_fn(config, preset, runs, **kw)
    finally:
        bench.close()
    wall = time.perf_counter() - t0
    cpu = cpu_time_s() - c0  # this process, all its threads (not Ray workers)
    meta |= {
        "wall_time_s": round(wall, 2),
        "cpu_time_s": round(cpu, 2),
        "loadavg_end": _loadavg(),
        "invocations": [
            *meta.get("invocations", []),
            {
                "started": started,
                "wall_time_s": round(wall, 2),
                "cpu_time_s": round(cpu, 2),
                "torch_threads": meta["torch_threads"],
                "loadavg_start": meta["loadavg_start"],
                "loadavg_end": _loadavg(),
                "device": meta["device"],
                **counters,
            },
        ],
    }
    write_json(meta_path, meta)
    report = build_report(out)
    claims = read_json(out / "claims.json")["runs"][0]["claims"]
    say(f"report: {report}", progress=progress)
    return ReproduceResult(
        out=out,
        report=report,
        claims=claims,
        trained=counters["trained"],
        evaluations=counters["evaluations"],
        stages_run=counters["stages_run"],
        stages_skipped=counters["stages_skipped"],
        wall_time_s=wall,
        cpu_time_s=cpu,
        counters=dict(counters),
    )
