"""A pruning run over checkpoints: strategies, fraction sweeps and the rank sweep, per checkpoint.

One evaluator is built per checkpoint and reused for every strategy, sweep point and rank (its
cache means a configuration is evaluated once): the adapter is its ``default`` branch and each
rank-truncated copy an extra branch ``rank<r>`` of the same model, gated off except when the
rank sweep switches it on alone.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from coto_tools.adapters.io import load_adapter
from coto_tools.adapters.keys import strip_peft_prefix
from coto_tools.adapters.lora import LoraAdapter
from coto_tools.errors import CheckpointError, OptionError, TaskError
from coto_tools.prune.rank import RankCurve, rank_grid, rank_truncation
from coto_tools.prune.strategies import (
    Strategy,
    StrategyKind,
    parse_strategies,
    resolve_players,
    select_strategy,
)
from coto_tools.prune.sweeps import (
    GateEvaluator,
    SweepCurve,
    SweepOrder,
    fraction_sweep,
    removal_order,
)
from coto_tools.runtime.device import DeviceLike
from coto_tools.runtime.executor import ExecutorConfig, local_device, local_dtype
from coto_tools.tasks.base import METRIC_NAMES, Metrics, Task

RUN_FILE = "coto.json"
OUTPUT_FILES = ("prune.csv", "prune_curves.csv", "prune_auc.csv", "prune_strategies.png",
                "prune_curves.png", "prune_report.md")  # fmt: skip

DEFAULT_BRANCH = "default"
# (task, {branch name: adapter}, split) -> an evaluator whose ``value`` takes ``{module: gate}``
# for the ``default`` branch and ``{(branch, module): gate}`` for the others
EvaluatorFactory = Callable[[Task, Mapping[str, LoraAdapter], str], GateEvaluator]


@dataclass(frozen=True)
class PruneConfig:
    """One ``coto-tools prune`` run. ``labels``: one per checkpoint, or empty for each
    ``coto.json``'s method; ``shapley``: one ``shapley.csv`` for all checkpoints or one per
    checkpoint; ``strategies``: names (see :mod:`coto_tools.prune.strategies`), ``None`` for
    the paper's eight; ``ranks``: ``None`` for ``r, r/2, ..., 1``; ``players_map``: the
    ``--players-map`` JSON file (``{regex: player}``) the ``shapley`` values were computed
    with, whose players the Shapley strategies and sweeps then rank (see
    :func:`~coto_tools.adapters.players.players_from_map`)."""

    checkpoints: tuple[Path, ...]
    labels: tuple[str, ...] = ()
    task: str | None = None
    split: str = "eval"
    metric: str = "accuracy"
    strategies: tuple[str, ...] | None = None
    steps: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    ranks: tuple[int, ...] | None = None
    curves: bool = True
    rank_sweep: bool = True
    shapley: tuple[Path, ...] = ()
    out: Path | None = None
    force: bool = False
    players_map: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoints", tuple(Path(p) for p in self.checkpoints))
        object.__setattr__(self, "shapley", tuple(Path(p) for p in self.shapley))
        if self.players_map is not None:
            object.__setattr__(self, "players_map", Path(self.players_map))
        if not self.checkpoints:
            raise OptionError("no checkpoints given: coto-tools prune CKPT [CKPT ...]")
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise OptionError("a checkpoint is given twice")
        if self.labels and len(self.labels) != len(self.checkpoints):
            raise OptionError(
                f"--label given {len(self.labels)} time(s); {len(self.checkpoints)} needed "
                "(one per checkpoint)"
            )
        if self.split not in ("eval", "quick"):
            raise OptionError(f"--split {self.split!r}: allowed eval, quick")
        if self.metric not in METRIC_NAMES:
            raise OptionError(f"--metric {self.metric!r}: allowed {', '.join(METRIC_NAMES)}")
        if self.steps < 1:
            raise OptionError(f"--steps {self.steps}: must be >= 1")
        if not self.seeds:
            raise OptionError("--seeds: give at least one seed")
        if self.ranks is not None:
            rank_grid(max(max(self.ranks, default=1), 1), self.ranks)
        if self.shapley and len(self.shapley) not in (1, len(self.checkpoints)):
            raise OptionError(
                f"--shapley given {len(self.shapley)} time(s): give one file for all "
                f"checkpoints or one per checkpoint ({len(self.checkpoints)})"
            )
        missing = [str(p) for p in self.shapley if not p.is_file()]
        if missing:
            raise OptionError(f"--shapley: no such file: {', '.join(missing)}")
        needs = [s.name for s in self.strategy_list() if s.kind.value.startswith("shapley")]
        if needs and not self.shapley:
            raise OptionError(f"strategy {needs[0]} needs --shapley shapley.csv")
        if self.players_map is not None:
            if not self.shapley:
                raise OptionError(
                    "--players-map names the players of --shapley values; give --shapley "
                    "shapley.csv (the other strategies choose modules, not players)"
                )
            if not self.players_map.is_file():
                raise OptionError(f"--players-map: no such file: {self.players_map}")

    def read_players_map(self) -> dict[str, str] | None:
        """``{regex: player}`` of :attr:`players_map` (``None`` without one)."""
        from coto_tools.adapters.players import read_players_map

        return None if self.players_map is None else read_players_map(self.players_map)

    def strategy_list(self) -> list[Strategy]:
        return parse_strategies(self.strategies, seeds=self.seeds)

    def out_dir(self) -> Path:
        if self.out is not None:
            return self.out
        first = self.checkpoints[0]
        return (first if first.is_dir() else first.parent) / "prune"


@dataclass(frozen=True)
class StrategyResult:
    strategy: Strategy
    kept: tuple[str, ...]
    metrics: Metrics


@dataclass(frozen=True)
class CheckpointResult:
    """Everything measured on one checkpoint; ``full``/``empty``: all adapters on / off."""

    path: str
    label: str
    task: str
    modules: tuple[str, ...]
    full: Metrics
    empty: Metrics
    strategies: tuple[StrategyResult, ...]
    curves: tuple[SweepCurve, ...] = ()
    rank: RankCurve | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PruneResult:
    config: PruneConfig
    checkpoints: tuple[CheckpointResult, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def metric(self) -> str:
        return self.config.metric

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(c.label for c in self.checkpoints))


def read_shapley_csv(path: str | Path) -> dict[str, float]:
    """``player -> value`` from a ``shapley.csv`` (columns player, ..., value, ...)."""
    p = Path(path)
    try:
        with p.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise OptionError(f"--shapley {p}: cannot read: {exc.strerror or exc}") from exc
    if not rows or "player" not in rows[0] or "value" not in rows[0]:
        raise OptionError(f"--shapley {p}: need a CSV with columns player and value")
    out: dict[str, float] = {}
    for i, row in enumerate(rows, start=2):
        try:
            v = float(row["value"])
        except (TypeError, ValueError):
            raise OptionError(
                f"--shapley {p}: line {i}: value {row['value']!r} is not a number"
            ) from None
        if not math.isfinite(v):
            raise OptionError(f"--shapley {p}: line {i}: value {v} is not finite")
        name = strip_peft_prefix(str(row["player"]))
        if name in out:
            raise OptionError(f"--shapley {p}: player {name} appears twice")
        out[name] = v
    return out


def check_shapley_players(
    path: str | Path,
    names: Sequence[str],
    values: Mapping[str, float],
    players_map: Mapping[str, str] | None = None,
) -> None:
    """:func:`resolve_players` with the ``shapley.csv`` named in the error."""
    try:
        resolve_players(names, values, players_map=players_map)
    except OptionError as exc:
        raise OptionError(f"--shapley {path}: {exc}") from None


def read_record(path: Path) -> dict[str, Any] | None:
    f = (path if path.is_dir() else path.parent) / RUN_FILE
    if not f.is_file():
        return None
    from coto_tools.jsonio import read_json

    rec: dict[str, Any] = read_json(f)  # a damaged coto.json is one error line
    return rec


def resolve_task(
    name: str | None,
    path: Path,
    rec: Mapping[str, Any] | None,
    get_task: Callable[..., Task] | None = None,
) -> Task:
    """``--task`` if given, else the task ``coto.json`` names; ``get_task``: how a task is made
    from its name and options (default :func:`coto_tools.tasks.get_task`)."""
    from coto_tools.tasks import get_task as default_get_task

    make = default_get_task if get_task is None else get_task
    if name is not None:
        return make(name)
    if rec is None or "task" not in rec:
        raise TaskError(f"{path}: no {RUN_FILE} naming its task; pass --task")
    return make(str(rec["task"]), **dict(rec.get("task_variant") or {}))


def resolve_task_spec(name: str | None, path: Path, rec: Mapping[str, Any] | None) -> str:
    """The task of :func:`resolve_task` as a spec string (what remote workers rebuild)."""
    from coto_tools.tasks import task_spec

    if name is not None:
        return name
    if rec is None or "task" not in rec:
        raise TaskError(f"{path}: no {RUN_FILE} naming its task; pass --task")
    return task_spec(str(rec["task"]), dict(rec.get("task_variant") or {}))


def default_evaluator(
    task: Task,
    adapters: Mapping[str, LoraAdapter],
    split: str,
    *,
    device: DeviceLike | None = None,
    dtype: str | None = None,
) -> GateEvaluator:
    """One :class:`~coto_tools.runtime.evaluator.Evaluator` holding every branch, on ``device``
    (``None``: the task's model where it is built, the CPU), in ``dtype`` (``--dtype``)."""
    from coto_tools.runtime.evaluator import Evaluator

    return Evaluator(task, dict(adapters), split=split, device=device, dtype=dtype)


def _gates(names: Sequence[str], on: Sequence[str]) -> dict[str, float]:
    keep = set(on)
    return {n: (1.0 if n in keep else 0.0) for n in names}


def prune_checkpoint(
    config: PruneConfig,
    index: int,
    *,
    factory: EvaluatorFactory | None = None,
    progress: bool = False,
    executor: ExecutorConfig | None = None,
    get_task: Callable[..., Task] | None = None,
) -> CheckpointResult:
    """Strategies, sweeps and the rank sweep of ``config.checkpoints[index]``.

    ``factory``: the checkpoint's evaluator (default: :func:`default_evaluator` on
    ``executor.device``, see :func:`~coto_tools.runtime.executor.local_device`). ``executor``
    (not local): the evaluations run on a Ray cluster instead; every configuration is listed
    first (a dry run) and evaluated in one parallel batch, then the run reads them from the
    driver's cache (same numbers as local)."""
    path = config.checkpoints[index]
    rec = read_record(path)
    label = config.labels[index] if config.labels else str((rec or {}).get("method", "adapter"))
    adapter = load_adapter(path)
    task = resolve_task(config.task, path, rec, get_task)
    names = adapter.names
    shapley = None
    pmap = config.read_players_map()
    if config.shapley:
        csv_path = config.shapley[min(index, len(config.shapley) - 1)]
        shapley = read_shapley_csv(csv_path)
        check_shapley_players(csv_path, names, shapley, pmap)  # fails early, naming the mismatch
    norms = {n: m.delta_norm() for n, m in adapter.modules.items()}
    explicit = config.strategies is not None
    notes: list[str] = []
    plan: list[Strategy] = []
    for s in config.strategy_list():
        try:
            select_strategy(names, s, shapley=shapley, norms=norms, players_map=pmap)
        except OptionError as exc:
            if (
                explicit
                or s.kind is not StrategyKind.kind
                or "no adapter of that kind" not in str(exc)
            ):
                raise
            notes.append(f"{s.name} skipped: {exc}")
            continue
        plan.append(s)
    orders: list[tuple[SweepOrder, int | None]] = []
    if config.curves:
        if shapley is not None:
            orders += [(SweepOrder.shapley_asc, None), (SweepOrder.shapley_desc, None)]
        orders.append((SweepOrder.norm_asc, None))
        orders += [(SweepOrder.random, s) for s in config.seeds]
    grid: list[int] = []
    branches = {DEFAULT_BRANCH: adapter}
    if config.rank_sweep:
        grid = rank_grid(max(m.rank for m in adapter.modules.values()), config.ranks)
        branches.update({f"rank{r}": rank_truncation(adapter, r) for r in grid})

    def measure(ev: GateEvaluator, bar: Any) -> tuple[Any, ...]:
        full = ev.value(_gates(names, names))
        empty = ev.value(_gates(names, ()))
        bar.update(2)
        results = []
        for s in plan:
            kept = select_strategy(names, s, shapley=shapley, norms=norms, players_map=pmap)
            results.append(StrategyResult(s, tuple(kept), ev.value(_gates(names, kept))))
            bar.update(1)
        curves = []
        for order, seed in orders:
            ordering = removal_order(
                names, order, shapley=shapley, norms=norms, seed=seed or 0, players_map=pmap
            )
            name = order.value if seed is None else f"random/seed{seed}"
            curves.append(fraction_sweep(ev, ordering, config.steps, name=name, seed=seed))
            bar.update(1)
        rank_metrics = []
        for r in grid:  # the truncated copy alone: its branches on, the original's off
            rank_metrics.append(ev.value({(f"rank{r}", m): 1.0 for m in names}))
            bar.update(1)
        return full, empty, results, curves, rank_metrics

    total = 2 + len(plan) + len(orders) + len(grid)
    if executor is None or executor.is_local:
        if factory is None:
            ev = default_evaluator(
                task, branches, config.split,
                device=local_device(executor), dtype=local_dtype(executor),
            )  # fmt: skip
        else:
            ev = factory(task, branches, config.split)
    else:
        from coto_tools.runtime.executor import EvaluatorSpec, Recorder, make_evaluator

        spec = EvaluatorSpec(
            resolve_task_spec(config.task, path, rec), tuple(branches.items()), split=config.split
        )
        recorder = Recorder()
        measure(recorder, tqdm(total=total, disable=True))  # list every configuration
        ev = make_evaluator(spec, executor)
        ev.value_batch(recorder.configs)  # all at once, spread over the workers
    bar = tqdm(total=total, desc=path.name, disable=not progress)
    try:
        full, empty, results, curves, rank_metrics = measure(ev, bar)
    finally:
        bar.close()
        close = getattr(ev, "close", None)
        if callable(close):
            close()
    rank = RankCurve(tuple(grid), tuple(rank_metrics)) if config.rank_sweep else None
    return CheckpointResult(
        path=str(path),
        label=label,
        task=task.name,
        modules=tuple(names),
        full=full,
        empty=empty,
        strategies=tuple(results),
        curves=tuple(curves),
        rank=rank,
        notes=tuple(notes),
    )


def run_prune(
    config: PruneConfig,
    *,
    factory: EvaluatorFactory | None = None,
    progress: bool = False,
    executor: ExecutorConfig | None = None,
    get_task: Callable[..., Task] | None = None,
) -> PruneResult:
    """Every checkpoint of ``config`` (see :func:`prune_checkpoint`); checks inputs first.
    ``factory``: the evaluator of each checkpoint (closed after it, if it has ``close``;
    default: :func:`default_evaluator` on the executor's device);
    ``get_task``: how tasks are made (default :func:`coto_tools.tasks.get_task`; a caller
    holding built tasks passes its own so their tokenised splits are reused)."""
    missing = [str(p) for p in config.checkpoints if not p.exists()]
    if missing:
        raise CheckpointError(f"no such checkpoint(s): {', '.join(missing)}")
    out = [
        prune_checkpoint(
            config, i, factory=factory, progress=progress, executor=executor, get_task=get_task
        )
        for i in range(len(config.checkpoints))
    ]
    tasks = sorted({c.task for c in out})
    notes = () if len(tasks) == 1 else (f"checkpoints evaluated on different tasks: {tasks}",)
    return PruneResult(config, tuple(out), notes)
