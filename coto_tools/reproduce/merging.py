"""Merging stages: same-task merges of seeds (ratios 1:1, 1:2, 1:1:1) and cross-task merges
(task arithmetic, arXiv 2212.04089; TIES, arXiv 2306.01708).

Same-task merges combine *disjoint* groups of seeds ((0, 1), (2, 3), ... for pairs; (0, 1, 2),
... for triples), so no two merges share a seed and each group is an independent unit for the
claim's test. Three variants, labelled (:data:`~coto_tools.reproduce.claims.MERGE_VARIANTS`):

- ``param-average``: the plain parameter average, ``A = Σ w_i A_i``, ``B = Σ w_i B_i`` (the
  factor-space point of LMC, :func:`~coto_tools.lmc.space.interpolate_factors`); the claim's
  primary variant (why: :data:`~coto_tools.reproduce.claims.MERGE_WHY`);
- ``peft-linear``: PEFT's ``linear`` combination in factor space (``A`` and ``B`` each scaled by
  ``sqrt(w_i)`` and summed: an adapter merged 1:1 with itself gives ``2 ΔW``, and the product
  carries the cross terms ``B_i A_j``), what PEFT users get;
- ``delta-average``: exact, ``ΔW = Σ w_i ΔW_i`` (``method=cat``: factors concatenated).

All three at 1:1; 1:2 and 1:1:1 for the primary variant only (time goes to seeds, not to
variants). Each merged adapter is evaluated as one named branch of a shared evaluator, and its
per-document correctness is kept (``docs``, a string of 0/1) for the paired test.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from coto_tools.adapters import load_adapter
from coto_tools.adapters.lora import LoraAdapter
from coto_tools.merge import MergeConfig, MergeMethod, MergeSpace, merge_adapters
from coto_tools.reproduce.claims import MERGE_PRIMARY
from coto_tools.reproduce.commands import task_spec
from coto_tools.reproduce.config import METHODS, Preset, ReproduceConfig, TaskSpec
from coto_tools.reproduce.stage import Stage, say, write_json
from coto_tools.reproduce.stats import disjoint_groups
from coto_tools.reproduce.training import Run
from coto_tools.reproduce.workbench import Workbench
from coto_tools.tasks.base import Metrics

RATIOS: dict[str, tuple[int, ...]] = {"1:2": (1, 2), "1:1": (1, 1), "1:1:1": (1, 1, 1)}
# variant -> (merge method of coto_tools.merge, space); param-average is not a merge method
VARIANTS: dict[str, tuple[MergeMethod | None, MergeSpace]] = {
    MERGE_PRIMARY: (None, MergeSpace.FACTOR),
    "peft-linear": (MergeMethod.LINEAR, MergeSpace.FACTOR),
    "delta-average": (MergeMethod.CAT, MergeSpace.DELTA),
}
CROSS_METHODS = (MergeMethod.TASK_ARITHMETIC, MergeMethod.TIES)


@dataclass(frozen=True)
class MergeSpec:
    """One merge: adapters ``runs`` (same training method) by ``merge`` (a
    :class:`MergeConfig`), or by the plain parameter average with ``weights`` when ``merge``
    is ``None``; ``variant``: the label of a same-task merge (module docstring)."""

    name: str
    method: str  # training method of the inputs (lora / coto)
    label: str  # ratio (1:2, ...) or cross-task merge method
    seeds: tuple[int, ...]
    runs: tuple[str, ...]
    merge: MergeConfig | None
    weights: tuple[float, ...] = ()
    variant: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "method": self.method,
            "label": self.label,
            "seeds": list(self.seeds),
            "runs": list(self.runs),
        }
        if self.variant:
            out["variant"] = self.variant
        if self.merge is None:
            return out | {
                "merge_method": MERGE_PRIMARY,
                "space": MergeSpace.FACTOR.value,
                "weights": list(self.weights),
                "density": None,
            }
        c = self.merge.resolve(len(self.runs))
        return out | {
            "merge_method": c.method.value,
            "space": c.space.value if c.space is not None else None,
            "weights": list(c.weights or ()),
            "density": c.density,
        }


def evaluate_adapters(
    task: TaskSpec,
    adapters: Mapping[str, LoraAdapter],
    split: str,
    *,
    progress: bool,
    counters: dict[str, int],
    desc: str,
    bench: Workbench | None = None,
    docs: dict[str, str] | None = None,
) -> dict[str, Metrics]:
    """Metrics of each adapter alone (all its modules at gate 1) on ``task``'s ``split`` (on
    ``bench``'s shared task and base model). ``docs``: filled with each adapter's per-document
    correctness (a string of 0/1, :func:`doc_bits`) when given."""
    bench = Workbench() if bench is None else bench
    ev = bench.evaluator(bench.get_task(task.name, **dict(task.variant)), adapters, split)
    try:
        out = {}
        for name in tqdm(
            adapters, desc=desc, unit="adapter", disable=not progress, file=sys.stderr
        ):
            config = {(name, m): 1.0 for m in adapters[name].modules}
            out[name] = ev.value(config)
            if docs is not None:
                docs[name] = doc_bits(ev, config)
        counters["evaluations"] += ev.n_forward
    finally:
        ev.close()
    return out


def doc_bits(ev: Any, config: Any) -> str:
    """Per-document correctness of ``config`` as a string of 0/1 (from the evaluator's kept
    logits; empty for tasks scored per token)."""
    from coto_tools.errors import TaskError

    try:
        per = ev.metrics_per_example(config)
    except TaskError:
        return ""
    return "".join("1" if c else "0" for c in per.correct.tolist())


def _row(spec: MergeSpec, m: Metrics, **extra: Any) -> dict[str, Any]:
    return spec.as_dict() | m.as_dict() | extra


def same_task_plan(runs: Mapping[str, Run], seeds: int) -> list[MergeSpec]:
    """Disjoint pairs of seeds at 1:1 in every variant and at 1:2 in the primary one; disjoint
    triples at 1:1:1 in the primary one (module docstring)."""
    plan = []
    pairs = disjoint_groups(range(seeds), 2)
    triples = disjoint_groups(range(seeds), 3)
    groups: list[tuple[str, tuple[int, ...], str]] = [
        *[("1:1", g, v) for g in pairs for v in VARIANTS],
        *[("1:2", g, MERGE_PRIMARY) for g in pairs],
        *[("1:1:1", g, MERGE_PRIMARY) for g in triples],
    ]
    for method in METHODS:
        by_seed = {r.seed: r for r in runs.values() if r.role == "main" and r.method == method}
        for ratio, combo, variant in groups:
            parts = RATIOS[ratio]
            weights = tuple(p / sum(parts) for p in parts)
            mm, space = VARIANTS[variant]
            tag = ratio.replace(":", "to")
            plan.append(
                MergeSpec(
                    name=f"{method.value}-{tag}-s{'-'.join(map(str, combo))}-{variant}",
                    method=method.value,
                    label=ratio,
                    seeds=combo,
                    runs=tuple(by_seed[s].name for s in combo),
                    merge=None
                    if mm is None
                    else MergeConfig(method=mm, weights=weights, space=space),
                    weights=weights,
                    variant=variant,
                )
            )
    return plan


def cross_plan(runs: Mapping[str, Run], cross_seeds: int) -> list[MergeSpec]:
    """Per method and seed: the two cross tasks' adapters merged by TA and by TIES (each
    method's default space and weights)."""
    plan = []
    for method, seed, mm in itertools.product(METHODS, range(cross_seeds), CROSS_METHODS):
        pair = [
            next(
                r for r in runs.values() if r.role == role and r.method == method and r.seed == seed
            )
            for role in ("cross0", "cross1")
        ]
        plan.append(
            MergeSpec(
                name=f"{method.value}-{mm.value}-s{seed}",
                method=method.value,
                label=mm.value,
                seeds=(seed,),
                runs=tuple(r.name for r in pair),
                merge=MergeConfig(method=mm),
            )
        )
    return plan


def _merged(plan: Sequence[MergeSpec], runs: Mapping[str, Run]) -> dict[str, LoraAdapter]:
    loaded: dict[str, LoraAdapter] = {}
    out = {}
    for spec in plan:
        inputs = []
        for name in spec.runs:
            if name not in loaded:
                loaded[name] = load_adapter(runs[name].dir)
            inputs.append(loaded[name])
        if spec.merge is None:  # the plain parameter average (LMC's factor-space point)
            from coto_tools.lmc.space import interpolate_factors

            out[spec.name] = interpolate_factors(inputs, spec.weights, source=f"<{spec.name}>")
        else:
            out[spec.name] = merge_adapters(inputs, spec.merge).adapter
    return out


def merge_stage(
    config: ReproduceConfig,
    preset: Preset,
    runs: Mapping[str, Run],
    *,
    progress: bool,
    counters: dict[str, int],
    bench: Workbench | None = None,
) -> dict[str, Any]:
    """Same-task merges; writes ``merge/merge.json`` (+ figure). Returns the summary."""
    plan = same_task_plan(runs, preset.seeds)
    key = {
        "split": preset.split,
        "plan": [s.as_dict() for s in plan],
        "inputs": {n: r.fingerprint for n, r in runs.items() if r.role == "main"},
    }
    stage = Stage(config.out, "merge", key)
    if (rec := stage.reused(force=config.force, progress=progress, counters=counters)) is not None:
        return rec
    work = stage.start()
    say(f"merge: {len(plan)} same-task merges on the {preset.split} split", progress=progress)
    singles = [
        {"name": r.name, "method": r.method, "label": "0:1", "seeds": [r.seed], "runs": [r.name]}
        | r.metrics
        for r in runs.values()
        if r.role == "main"
    ]
    rows = []
    if plan:
        docs: dict[str, str] = {}
        metrics = evaluate_adapters(
            config.main_task_spec(preset),
            _merged(plan, runs),
            preset.split,
            progress=progress,
            counters=counters,
            desc="merge",
            bench=bench,
            docs=docs,
        )
        rows = [_row(s, metrics[s.name], docs=docs.get(s.name, "")) for s in plan]
    summary = {"split": preset.split, "singles": singles, "merges": rows}
    write_json(work / "merge.json", summary)
    from coto_tools.reproduce.figures import merge_figure, save

    save(merge_figure(summary), work / "merge.png")
    counters["stages_run"] += 1
    return stage.commit({"figures": ["merge.png"], "summary": "merge.json"})


def cross_stage(
    config: ReproduceConfig,
    preset: Preset,
    runs: Mapping[str, Run],
    *,
    progress: bool,
    counters: dict[str, int],
    bench: Workbench | None = None,
) -> dict[str, Any]:
    """Cross-task merges evaluated on both tasks; writes ``cross/cross.json`` (+ figure), or a
    ``skipped`` record with the reason when the preset has no cross tasks."""
    key: dict[str, Any]
    if preset.cross_tasks is None:
        key = {"skipped": preset.cross_skip_reason}
    else:
        key = {
            "split": preset.split,
            "tasks": [t.as_dict() for t in preset.cross_tasks],
            "plan": [s.as_dict() for s in cross_plan(runs, preset.cross_seeds)],
            "inputs": {n: r.fingerprint for n, r in runs.items() if r.role != "main"},
        }
    stage = Stage(config.out, "cross", key)
    if (rec := stage.reused(force=config.force, progress=progress, counters=counters)) is not None:
        return rec
    work = stage.start()
    if preset.cross_tasks is None:
        say(f"cross: skipped ({preset.cross_skip_reason})", progress=progress)
        write_json(work / "cross.json", {"skipped": preset.cross_skip_reason})
        counters["stages_run"] += 1
        return stage.commit({"skipped": preset.cross_skip_reason, "summary": "cross.json"})
    plan = cross_plan(runs, preset.cross_seeds)
    say(f"cross: {len(plan)} cross-task merges, each evaluated on both tasks", progress=progress)
    merged = _merged(plan, runs)
    rows = []
    for i, t in enumerate(preset.cross_tasks):
        task = TaskSpec(t.name, {**dict(preset.task_variant), **dict(t.variant)})
        metrics = evaluate_adapters(
            task,
            merged,
            preset.split,
            progress=progress,
            counters=counters,
            desc=f"cross on {t.label}",
            bench=bench,
        )
        for s in plan:
            own = runs[s.runs[i]].metrics
            rows.append(
                _row(
                    s,
                    metrics[s.name],
                    eval_task=t.label,
                    own_accuracy=own.get("accuracy"),
                    eval_task_spec=task_spec(task.name, task.variant),
                )
            )
    singles = [
        {
            "name": r.name,
            "method": r.method,
            "seed": r.seed,
            "role": r.role,
            "task": preset.cross_tasks[int(r.role[-1])].label,
        }
        | r.metrics
        for r in runs.values()
        if r.role != "main"
    ]
    summary = {
        "split": preset.split,
        "tasks": [t.label for t in preset.cross_tasks],
        "singles": singles,
        "merges": rows,
    }
    write_json(work / "cross.json", summary)
    from coto_tools.reproduce.figures import cross_figure, save

    save(cross_figure(summary), work / "cross.png")
    counters["stages_run"] += 1
    return stage.commit({"figures": ["cross.png"], "summary": "cross.json"})
