"""Pruning, Shapley and LMC stages: thin wrappers over ``coto_tools.prune``, ``.shapley`` and
``.lmc`` that run LoRA and CoTo side by side and keep a JSON summary for the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from coto_tools.errors import CotoError
from coto_tools.reproduce.config import METHODS, Preset, ReproduceConfig
from coto_tools.reproduce.stage import Stage, say, write_json
from coto_tools.reproduce.training import Run
from coto_tools.reproduce.workbench import BranchView, Workbench


def main_runs(runs: Mapping[str, Run]) -> list[Run]:
    """The main task's runs, LoRA first, then CoTo, each by seed."""
    order = {m.value: i for i, m in enumerate(METHODS)}
    return sorted(
        (r for r in runs.values() if r.role == "main"), key=lambda r: (order[r.method], r.seed)
    )


def _inputs(runs: Sequence[Run]) -> dict[str, str]:
    return {r.name: r.fingerprint for r in runs}


def _metrics(m: Any) -> dict[str, float]:
    return dict(m.as_dict())


def _local(config: ReproduceConfig) -> bool:
    return config.executor is None or config.executor.is_local


def runs_evaluator(bench: Workbench, config: ReproduceConfig, rs: Sequence[Run], split: str) -> Any:
    """The workbench's evaluator holding every main run as a branch named after it, on the main
    task's ``split`` (shared by Shapley and pruning: see :mod:`~coto_tools.reproduce.workbench`)."""
    from coto_tools.adapters import load_adapter

    spec = rs[0].task  # what the runs were trained on (coto.json)
    task = bench.get_task(spec.name, **dict(spec.variant))
    return bench.runs_evaluator(task, {r.name: load_adapter(r.dir) for r in rs}, split)


# -- pruning ------------------------------------------------------------------------------------
def prune_stage(
    config: ReproduceConfig,
    preset: Preset,
    runs: Mapping[str, Run],
    *,
    progress: bool,
    counters: dict[str, int],
    bench: Workbench | None = None,
) -> dict[str, Any]:
    """The paper's eight structured-pruning strategies on every main run (``prune/``)."""
    from coto_tools.prune import DEFAULT_STRATEGIES, PruneConfig, run_prune, write_outputs

    rs = main_runs(runs)
    strategies = preset.prune_strategies or DEFAULT_STRATEGIES
    key = {"split": preset.split, "strategies": list(strategies), "inputs": _inputs(rs)}
    stage = Stage(config.out, "prune", key)
    if (rec := stage.reused(force=config.force, progress=progress, counters=counters)) is not None:
        return rec
    work = stage.start()
    say(
        f"prune: {len(strategies)} strategies x {len(rs)} adapters on the {preset.split} split",
        progress=progress,
    )
    pc = PruneConfig(
        checkpoints=tuple(r.dir for r in rs),
        labels=tuple(r.method for r in rs),
        split=preset.split,
        metric="accuracy",
        strategies=preset.prune_strategies,
        curves=False,
        rank_sweep=False,
        out=work,
        force=True,
    )
    kw: dict[str, Any] = {}
    shared = None
    if bench is not None and _local(config):
        shared = one = runs_evaluator(bench, config, rs, preset.split)

        def factory(task: Any, branches: Mapping[str, Any], split: str) -> BranchView:
            # each checkpoint's evaluator: its branch of the shared one (found by its weights)
            if task is not one.task or split != one.split or set(branches) != {"default"}:
                raise CotoError(f"prune: no shared evaluator for {task.name} {split} {branches}")
            return BranchView(one, bench.branch_of(one, branches["default"]))

        kw = {"factory": factory, "get_task": bench.get_task}
    result = run_prune(pc, progress=progress, executor=config.executor, **kw)
    counters["evaluations"] += sum(2 + len(c.strategies) for c in result.checkpoints)
    write_outputs(result, work)
    if shared is None and bench is not None:
        # evaluated elsewhere (Ray): the per-document results the claims pair on come from a
        # local evaluator of the same runs, so the verdicts equal a local run's
        shared = runs_evaluator(bench, config, rs, preset.split)
    rows = []
    for r, c in zip(rs, result.checkpoints, strict=True):
        rows.append(
            {
                "run": r.name,
                "method": r.method,
                "seed": r.seed,
                "full": _metrics(c.full),
                "empty": _metrics(c.empty),
                "strategies": {s.strategy.name: _metrics(s.metrics) for s in c.strategies},
                "kept": {s.strategy.name: list(s.kept) for s in c.strategies},
                "notes": list(c.notes),
                "docs": _prune_docs(shared, r, c),
            }
        )
    write_json(work / "prune_summary.json", {"split": preset.split, "runs": rows})
    counters["stages_run"] += 1
    return stage.commit({"figures": ["prune_strategies.png"], "summary": "prune_summary.json"})


def _prune_docs(shared: Any, run: Run, result: Any) -> dict[str, str]:
    """Per-document correctness (strings of 0/1) of ``run`` with all adapters, none, and each
    strategy's survivors, read from the shared evaluator's kept logits (nothing is evaluated
    again when pruning ran on it; evaluated here when it ran on Ray); empty without per-document
    logits (tasks scored per token)."""
    if shared is None:
        return {}
    from coto_tools.reproduce.merging import doc_bits

    names = list(shared.adapters[run.name].modules)

    def config(kept: Sequence[str]) -> dict[tuple[str, str], float]:
        keep = set(kept)
        return {(run.name, m): 1.0 if m in keep else 0.0 for m in names}

    out = {"full": doc_bits(shared, config(names)), "empty": doc_bits(shared, config(()))}
    for s in result.strategies:
        out[s.strategy.name] = doc_bits(shared, config(s.kept))
    return {k: v for k, v in out.items() if v}


# -- Shapley ------------------------------------------------------------------------------------
def shapley_stage(
    config: ReproduceConfig,
    preset: Preset,
    runs: Mapping[str, Run],
    *,
    progress: bool,
    counters: dict[str, int],
    bench: Workbench | None = None,
) -> dict[str, Any]:
    """Shapley values of every main run's players (``shapley/<run>/``) and the heatmaps of LoRA
    beside CoTo on one colour scale. An interrupted stage resumes from each run's evaluation
    log (kept in the stage's work folder)."""
    from coto_tools.shapley.outputs import balance_summary, write_comparison
    from coto_tools.shapley.run import ShapleyConfig, shapley_run

    rs = main_runs(runs)
    from coto_tools.adapters.players import Grouping
    from coto_tools.shapley.registry import Estimator
    from coto_tools.shapley.run import Metric, Split

    sc = ShapleyConfig(
        players=Grouping(preset.shapley_players),
        metric=Metric(preset.shapley_metric),
        estimator=Estimator(preset.shapley_estimator),
        split=Split(preset.analysis_split),
        interactions=True,  # pairwise Faith-Shap from the same coalitions (no extra evaluation)
    )
    key = {
        "players": sc.players.value,
        "metric": sc.metric.value,
        "estimator": sc.estimator.value,
        "split": sc.split.value,
        "interactions": "faith-shap-2",
        "inputs": _inputs(rs),
    }
    stage = Stage(config.out, "shapley", key)
    if (rec := stage.reused(force=config.force, progress=progress, counters=counters)) is not None:
        return rec
    work = stage.start(fresh=config.force)
    say(
        f"shapley: {sc.estimator.value} values of {sc.players.value} players, {len(rs)} adapters, "
        f"{sc.split.value} split",
        progress=progress,
    )
    results = []
    rows = []
    for i, r in enumerate(rs, 1):
        say(f"shapley {i}/{len(rs)}: {r.name}", progress=progress)
        kw: dict[str, Any] = {}
        if bench is not None and _local(config):
            shared = runs_evaluator(bench, config, rs, sc.split.value)
            kw = {"evaluator": shared, "branch": r.name}
        res = shapley_run(
            r.dir,
            replace(sc, out=work / r.name),
            progress=progress,
            executor=config.executor,
            figures=False,  # the stage draws the runs side by side (write_comparison)
            **kw,
        )
        counters["evaluations"] += int(res.summary["evaluations_computed"])
        results.append(res)
        p = res.primary
        rows.append(
            {
                "run": r.name,
                "method": r.method,
                "seed": r.seed,
                "players": list(res.players.names),
                "members": [list(m) for m in res.players.members],
                "values": p.values.tolist(),
                "std_errors": p.std_errors.tolist(),
                "v_full": p.v_full,
                "v_empty": p.v_empty,
                "estimator": p.estimator,
                "evaluations": p.evaluations,
                "balance": balance_summary(res.players, p.values),
                "accuracy_values": res.results["accuracy"].values.tolist(),
                "interactions": None if res.interactions is None else res.interactions.to_dict(),
            }
        )
    write_comparison(work, results)
    from coto_tools.reproduce.figures import interactions_mean_figure, save, shapley_mean_figure

    save(shapley_mean_figure(rows, metric=sc.metric.value), work / "shapley_mean.png")
    save(interactions_mean_figure(rows), work / "shapley_interactions.png")
    write_json(work / "shapley_summary.json", {**key, "runs": rows})
    counters["stages_run"] += 1
    figures = ["shapley_mean.png", "shapley_heatmaps.png", "shapley_interactions.png"]
    return stage.commit({"figures": figures, "summary": "shapley_summary.json"})


# -- LMC ----------------------------------------------------------------------------------------
def lmc_pairs(runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """Disjoint pairs of seeds of the same method, (0, 1), (2, 3), ... (LoRA pairs first): no
    seed is in two pairs, so each pair's barrier is an independent unit for the claim."""
    from coto_tools.reproduce.stats import disjoint_groups

    pairs = []
    for m in METHODS:
        by_seed = {r.seed: r for r in runs if r.method == m.value}
        pairs += [(by_seed[a], by_seed[b]) for a, b in disjoint_groups(list(by_seed), 2)]
    return pairs


def lmc_stage(
    config: ReproduceConfig,
    preset: Preset,
    runs: Mapping[str, Run],
    *,
    progress: bool,
    counters: dict[str, int],
    bench: Workbench | None = None,
) -> dict[str, Any]:
    """LMC paths and barriers between seeds, in delta and factor space (``lmc/``)."""
    from coto_tools.lmc.run import LmcConfig, run_lmc, write_outputs

    rs = main_runs(runs)
    pairs = lmc_pairs(rs)
    key = {"points": preset.lmc_points, "split": preset.analysis_split, "inputs": _inputs(rs)}
    stage = Stage(config.out, "lmc", key)
    if (rec := stage.reused(force=config.force, progress=progress, counters=counters)) is not None:
        return rec
    work = stage.start()
    if not pairs:
        reason = "needs at least 2 seeds per method"
        say(f"lmc: skipped ({reason})", progress=progress)
        write_json(work / "lmc_summary.json", {"skipped": reason})
        counters["stages_run"] += 1
        return stage.commit({"skipped": reason, "summary": "lmc_summary.json"})
    say(
        f"lmc: {len(pairs)} seed pairs, {preset.lmc_points} points, delta and factor space, "
        f"{preset.analysis_split} split",
        progress=progress,
    )
    lc = LmcConfig(
        groups=tuple((a.dir, b.dir) for a, b in pairs),
        labels=tuple(f"{a.method} s{a.seed}-s{b.seed}" for a, b in pairs),
        points=preset.lmc_points,
        split=preset.analysis_split,
        out=work,
        force=True,
    )
    if bench is not None:
        bench.close_runs_evaluator()  # Shapley and pruning are done with it
    get = bench.get_task if bench is not None else None
    run = run_lmc(lc, progress=progress, executor=config.executor, get_task=get)
    counters["evaluations"] += int(run.evaluations)
    write_outputs(run, figure=False)  # the stage draws its own (lmc_side_by_side.png)
    rows = []
    for (a, b), res in zip(pairs, run.results, strict=True):
        bars = res.barriers()
        rows.append(
            {
                "method": a.method,
                "seeds": [a.seed, b.seed],
                "label": res.label,
                "barriers": {
                    sp.value: {m: _clean(bars[sp][m].as_dict()) for m in bars[sp]} for sp in bars
                },
                "curves": {
                    sp.value: {
                        "a": list(cv.a),
                        **{m: cv.values(m).tolist() for m in ("accuracy", "loss", "logprob")},
                    }
                    for sp, cv in res.curves.items()
                },
            }
        )
    n = next(iter(run.results[0].endpoints().values())).n
    summary = {"split": preset.analysis_split, "points": preset.lmc_points, "n": n, "pairs": rows}
    write_json(work / "lmc_summary.json", summary)
    from coto_tools.reproduce.figures import lmc_figure, save

    save(lmc_figure(summary), work / "lmc_side_by_side.png")
    counters["stages_run"] += 1
    return stage.commit({"figures": ["lmc_side_by_side.png"], "summary": "lmc_summary.json"})


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def stage_path(root: Path, stage: str, name: str) -> Path:
    return Path(root) / stage / name
