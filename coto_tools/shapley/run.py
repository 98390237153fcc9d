"""A Shapley run on a checkpoint: build the adapter game, estimate, write the outputs.

``shapley_run(checkpoint, ShapleyConfig(...)) -> ShapleyRunResult``. The game's players are
groups of the checkpoint's adapter modules (``module``/``layer``/``kind``/``tower``); the value of
a coalition is the task metric (on the checkpoint's task from ``coto.json``, or ``task=``) with
only those players' adapters on. Every metric is recorded for every coalition, so the estimates
of all metrics come from the same evaluations (:func:`coto_tools.shapley.recompute`).

Outputs in ``out`` (default ``<checkpoint>/shapley``), written atomically except the log:
``shapley.csv``, ``shapley.json``, ``shapley_heatmap.png``, ``shapley_convergence.png`` and
``evaluations.jsonl`` (append-only :class:`~coto_tools.shapley.EvaluationLog`): rerunning the
same command after an interruption evaluates nothing twice and, because the estimators' sample
sequence depends only on the seed, returns the numbers of an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from coto_tools.adapters.io import load_adapter
from coto_tools.adapters.lora import LoraAdapter
from coto_tools.adapters.outguard import check_output, task_files
from coto_tools.adapters.players import (
    Grouping,
    Players,
    make_players,
    players_from_map,
    read_players_map,
)
from coto_tools.errors import CheckpointError, OptionError, ShapleyError, TaskError, enum_option
from coto_tools.runtime.dtype import dtype_name
from coto_tools.runtime.executor import ExecutorConfig, local_device, local_dtype, planned_dtype
from coto_tools.shapley._sampling import SamplingConfig, evaluation_budget
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.documents import (
    combine_interactions,
    combine_results,
    estimate_documents,
    two_pairs_budget,
)
from coto_tools.shapley.game_adapter import (
    AdapterGame,
    adapter_scalings,
    content_digest,
    game_fingerprint,
    weights_hash,
)
from coto_tools.shapley.interaction_outputs import write_interactions
from coto_tools.shapley.interactions import Interactions, estimate_interactions
from coto_tools.shapley.log import EvaluationLog
from coto_tools.shapley.outputs import write_outputs
from coto_tools.shapley.registry import Estimator, choose_estimator, estimate_shapley, recompute
from coto_tools.shapley.result import ShapleyResult
from coto_tools.tasks.base import METRIC_NAMES, Task, uses_metric_sums

DEFAULT_BUDGET = 300
"""Default evaluation budget, in whole-split evaluations: 18 module players (MiniLM q/k/v) take
about 8 antithetic pairs of permutations on the whole split, or 8-9 pairs in each of 12 document
groups (:data:`AUTO_DOCUMENT_GROUPS`). With prefix reuse one evaluation of the 400-document eval
split costs about 1.1-1.4 s on an idle 2-core machine; back to back with one thread the default
run of a bbc-topic checkpoint took 560 s wall, 513 s CPU in 12 document groups and 380 s wall,
380 s CPU on the whole split (270 evaluations), 1.2x the CPU time per document for 2.6x smaller
standard errors; ``--split quick`` (128 documents) is about 2.5x faster."""

LOG_FILE = "evaluations.jsonl"

AUTO_DOCUMENT_GROUPS = 12
"""``--document-groups auto``: this many groups (at least 4 documents each). Measured
(benchmarks/bench_shapley_documents.py, median relative L2 error over 20 seeds): on the
18-module-player game (48 documents) 12 groups of 4 reached 0.05 at 150 whole-split evaluations'
worth of documents (0.027 at 300) where the whole split needed 600 (0.072 at 300); on two
12-player tables of per-document values at 75 and 50 against 200 and 150; the 95% intervals
covered 0.94-0.99 from 75 on. On 2 CPU cores a group evaluation costs more than its share of the
documents (4 of 48: 0.128 of a whole-split one), so in wall time the 18-player game's 150 took
what 230 whole-split evaluations take."""

SAMPLES_DOCUMENTS = (Estimator.AUTO, Estimator.STRATIFIED)
"""The estimators a run over document groups can use (each group is sampled by ``stratified``)."""


class Metric(str, Enum):
    logprob = "logprob"
    accuracy = "accuracy"
    loss = "loss"


class Split(str, Enum):
    eval = "eval"
    quick = "quick"


@dataclass(frozen=True)
class ShapleyConfig:
    """One Shapley run. ``budget``: most distinct coalitions evaluated (default
    :data:`DEFAULT_BUDGET`, unless ``permutations`` is given); ``task``: overrides the task of
    ``coto.json`` (required for a checkpoint without one); ``out``: output directory (default
    ``<checkpoint>/shapley``); ``force``: discard an existing evaluation log (start over) instead
    of resuming from it; ``batch_size``: coalitions per evaluator call (the log is appended after
    each); ``sample_batch``: new coalitions the estimator draws before they are evaluated, in
    one prefix-sharing order (pieces of ``batch_size``; ``tol`` is checked after each such
    batch; the samples drawn do not depend on it); ``eval_batch_size``: documents per forward
    pass."""

    players: Grouping = Grouping.module
    metric: Metric = Metric.logprob
    estimator: Estimator = Estimator.AUTO
    budget: int | None = None
    permutations: int | None = None
    tol: float | None = None
    seed: int = 0
    split: Split = Split.eval
    task: str | None = None
    out: Path | None = None
    force: bool = False
    batch_size: int = 16  # small pieces: the progress bar and the log advance every few seconds
    sample_batch: int = 256
    eval_batch_size: int = 64
    players_map: Path | None = None
    """``--players-map FILE``: players by regex (JSON ``{regex: player}``) instead of
    ``players`` (:func:`~coto_tools.adapters.players.players_from_map`)."""
    interactions: bool = False
    """``--interactions``: also the pairwise Faith-Shap indices from the same coalitions
    (:mod:`coto_tools.shapley.interactions`; no extra evaluation)."""
    document_groups: int | None = None
    """``--document-groups G``: sample the documents too (:mod:`coto_tools.shapley.documents`):
    the split dealt into ``G`` groups, ``stratified`` on each, the budget counted in whole-split
    evaluations; 1: every coalition on the whole split; ``None`` (``auto``, the default): up to
    :data:`AUTO_DOCUMENT_GROUPS` groups of at least 4 documents when the run samples (not
    ``exact``) on a local evaluator, else 1."""

    def __post_init__(self) -> None:
        for name, cls in (
            ("players", Grouping),
            ("metric", Metric),
            ("estimator", Estimator),
            ("split", Split),
        ):
            object.__setattr__(self, name, enum_option(cls, getattr(self, name), f"--{name}"))
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        bad = []
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 2):
            bad.append(f"--budget must be an integer >= 2 (v(N) and v(empty)), got {self.budget}")
        if self.permutations is not None and self.permutations < 1:
            bad.append(f"--permutations must be >= 1, got {self.permutations}")
        if self.tol is not None and not 0.0 < self.tol < 1.0:
            bad.append(f"--tol must be in (0, 1), got {self.tol}")
        if not isinstance(self.seed, int) or self.seed < 0:
            bad.append(f"--seed must be an integer >= 0, got {self.seed}")
        if self.batch_size < 1 or self.eval_batch_size < 1 or self.sample_batch < 1:
            bad.append("batch sizes must be >= 1")
        groups = self.document_groups
        if groups is not None and (not isinstance(groups, int) or groups < 1):
            bad.append(f"--document-groups must be auto or an integer >= 1, got {groups}")
        elif groups is not None and groups > 1 and self.estimator not in SAMPLES_DOCUMENTS:
            bad.append(
                "--document-groups samples each group with stratified; it cannot be used with "
                f"--estimator {self.estimator.value}"
            )
        if self.interactions and self.estimator is Estimator.SVARM:
            bad.append(
                "--interactions needs the coalitions of exact, permutation, antithetic, "
                "stratified or kernelshap (auto picks one of them), not svarm"
            )
        if bad:
            raise OptionError("; ".join(bad))

    def effective_budget(self) -> int | None:
        """The budget the estimator gets: ``budget``, else the default unless ``permutations``."""
        if self.budget is not None:
            return self.budget
        return None if self.permutations is not None else DEFAULT_BUDGET


@dataclass(frozen=True)
class Prepared:
    """A checkpoint resolved before anything runs or is written (all input checks done)."""

    checkpoint: Path
    adapter: LoraAdapter
    task: Task
    task_name: str
    task_variant: dict[str, Any]
    players: Players
    out: Path
    weights_sha256: str
    inputs_sha256: dict[str, str] = field(default_factory=dict)
    """``{path: content digest}`` of the files the task reads (data, plugin, base model)."""
    players_map: dict[str, str] | None = None
    """The ``--players-map`` rules as read (regex -> player), recorded in ``shapley.json``."""


@dataclass(frozen=True)
class ShapleyRunResult:
    """``results[metric]``: the estimate for every metric (same coalitions); ``summary``: the
    content of ``shapley.json``; ``files``: the outputs written."""

    checkpoint: Path
    config: ShapleyConfig
    players: Players
    results: dict[str, ShapleyResult]
    summary: dict[str, Any]
    out: Path
    files: dict[str, Path] = field(default_factory=dict)
    interactions: Interactions | None = None
    """Pairwise Faith-Shap indices of the primary metric (with ``config.interactions``)."""

    @property
    def primary(self) -> ShapleyResult:
        return self.results[self.config.metric.value]


def default_out(checkpoint: Path) -> Path:
    if checkpoint.is_file():
        return checkpoint.parent / f"{checkpoint.stem}.shapley"
    return checkpoint / "shapley"


class _EvalProgress:
    """The progress bar of a run (stderr): it advances as each piece of ``batch_size``
    coalitions is computed, whatever the estimator, and shows an ETA when the number of
    evaluations is known (a budget, or the ``2^n`` of an exact run). The estimator's updates
    after each batch set the exact count (evaluations from the log included)."""

    def __init__(self, config: ShapleyConfig, n_players: int, from_log: int) -> None:
        from tqdm.auto import tqdm

        budget = config.effective_budget()
        total = None if budget is None else min(int(budget), 1 << min(n_players, 62))
        self.bar = tqdm(
            total=total,
            initial=from_log if total is None else min(from_log, total),
            desc="shapley",
            unit="eval",
            file=sys.stderr,
            smoothing=0.1,
        )

    def computed(self, k: int) -> None:
        self.bar.update(k)

    def update(self, info: Any) -> None:  # a ProgressInfo after each batch
        self.bar.n = int(info.evaluations)
        self.bar.set_postfix(samples=info.n_samples, max_se=f"{info.max_std_error:.3g}")

    def close(self) -> None:
        self.bar.close()


def _check_adapter(ckpt: Path) -> None:
    """Raise :class:`CheckpointError` unless ``ckpt`` holds a LoRA adapter (header only)."""
    from coto_tools.adapters import open_checkpoint

    try:
        open_checkpoint(ckpt)
    except CheckpointError as exc:
        hint = ""
        if ckpt.is_dir() and (ckpt / "reproduce.json").is_file():
            hint = (
                "; it is a coto-tools reproduce folder: its adapters are in "
                f"{ckpt / 'train'}/<run>, and its Shapley values in {ckpt / 'shapley'}"
            )
        raise CheckpointError(f"{exc}{hint}") from None


def prepare(checkpoint: str | Path, config: ShapleyConfig) -> Prepared:
    """Load the checkpoint, resolve its task and players; raise on any bad input, write nothing."""
    from coto_tools.tasks import get_task, task_spec
    from coto_tools.train.run import RUN_FILE, read_record

    ckpt = Path(checkpoint)
    if not ckpt.exists():
        raise CheckpointError(f"{ckpt}: checkpoint not found")
    _check_adapter(ckpt)  # "no adapter here" before "no task known"
    record = read_record(ckpt) if ckpt.is_dir() and (ckpt / RUN_FILE).is_file() else None
    if config.task is not None:
        task_name, variant = config.task, {}
    elif record is not None:
        task_name, variant = str(record["task"]), dict(record["task_variant"])
    else:
        raise TaskError(
            f"{ckpt}: no task known (no {RUN_FILE} from coto-tools train); pass --task NAME"
        )
    out = config.out if config.out is not None else default_out(ckpt)
    reads = task_files(task_spec(task_name, variant))
    check_output(out, [ckpt, *reads], replaces=False, inside_ok=True)
    task = get_task(task_name, **variant)
    adapter = load_adapter(ckpt)
    rules = read_players_map(config.players_map) if config.players_map is not None else None
    if rules is not None:
        players = players_from_map(adapter.modules, rules)
    else:
        players = make_players(adapter.modules, config.players)
    if len(players) < 1:
        raise OptionError(f"{ckpt}: the adapter has no modules")
    return Prepared(
        checkpoint=ckpt,
        adapter=adapter,
        task=task,
        task_name=task_name,
        task_variant=variant,
        players=players,
        out=out,
        weights_sha256=weights_hash(ckpt),
        inputs_sha256={str(p): content_digest(p) for p in reads},
        players_map=rules,
    )


def cap_budget(config: ShapleyConfig, n: int) -> tuple[ShapleyConfig, str | None]:
    """A sampling request that may use at least the ``2^n`` distinct coalitions of the game
    (``budget``, or what ``permutations`` can cost) becomes the exact computation, which needs
    exactly those ``2^n`` evaluations and has no sampling error (a sampler could never draw a
    new coalition past them); returns the config to run and a note saying so (or ``None``)."""
    if config.estimator in (Estimator.EXACT, Estimator.AUTO) or n > 62:
        return config, None
    total = 1 << n
    budget = evaluation_budget(n, config.effective_budget(), config.permutations)
    if budget is None or budget < total:
        return config, None
    note = (
        f"budget {budget} >= the {total} distinct coalitions of {n} players: computing the "
        f"exact Shapley values ({total} evaluations) instead of sampling with "
        f"{config.estimator.value}"
    )
    exact = replace(config, estimator=Estimator.EXACT, budget=total, permutations=None, tol=None)
    return exact, note


def _check_budget(config: ShapleyConfig, n: int) -> None:
    """Refuse a budget the estimator cannot work with before anything is written or evaluated:
    a dry run of the same estimator on the null game (all values 0) costs no model evaluation
    and raises the same :class:`ShapleyError` the real run would."""
    estimate_shapley(
        lambda coalitions: np.zeros(len(coalitions)),
        n,
        estimator=config.estimator,
        budget=config.effective_budget(),
        permutations=config.permutations,
        tol=None,
        seed=config.seed,
        batch_size=config.sample_batch,
    )


def shapley_run(
    checkpoint: str | Path | Prepared,
    config: ShapleyConfig,
    *,
    progress: bool = False,
    model: Any = None,
    executor: ExecutorConfig | None = None,
    evaluator: Any = None,
    branch: str = "default",
    figures: bool = True,
) -> ShapleyRunResult:
    """Estimate the Shapley values of ``checkpoint``'s adapters and write the outputs.

    ``model``: a base model of the task to reuse (default: the task builds one).
    ``executor``: where coalitions are evaluated (default local; see
    :mod:`coto_tools.runtime.executor`); sampling and the log stay here, so the numbers are the
    local run's. ``evaluator``: an open evaluator of the checkpoint's task and ``config.split``
    already holding the checkpoint's adapter (bit for bit, checked) as branch ``branch``, e.g.
    one shared with other analyses so that configurations they share are evaluated once; the
    caller owns it (it is not closed here). ``figures``: write the heatmap and convergence
    figures (``False``: only the CSV, the JSON and the log).
    """
    prep = checkpoint if isinstance(checkpoint, Prepared) else prepare(checkpoint, config)
    metrics = list(METRIC_NAMES)
    fingerprint = game_fingerprint(
        weights=prep.weights_sha256,
        task=prep.task_name,
        task_variant=prep.task_variant,
        split=config.split.value,
        players=prep.players,
        metrics=metrics,
        scalings=adapter_scalings(prep.adapter),
        inputs=prep.inputs_sha256,
        identity=prep.task.identity(),
        dtype=(
            dtype_name(evaluator.dtype)
            if getattr(evaluator, "dtype", None) is not None
            else planned_dtype(executor, prep.task)
        ),
    )
    n = len(prep.players)
    requested = config
    config, capped = cap_budget(config, n)
    if capped is not None:
        warnings.warn(capped, stacklevel=2)
    _check_budget(config, n)
    groups = _document_groups(config, n, prep.task, executor, evaluator)
    if groups > 1 and config.document_groups is None and not config.force:
        old_log = prep.out / LOG_FILE
        if old_log.is_file() and not group_log_paths(prep.out, groups)[0].parent.exists():
            groups = 1  # a whole-split run (e.g. of an earlier version) to resume: resume it
            warnings.warn(
                f"{old_log}: resuming this whole-split evaluation log (--document-groups 1); "
                "--force starts over with document groups",
                stacklevel=2,
            )
    log_paths = [prep.out / LOG_FILE] if groups == 1 else group_log_paths(prep.out, groups)
    created = _missing_dirs(log_paths[0].parent)
    new_logs = [p for p in log_paths if not p.exists() or config.force]
    try:
        log_paths[0].parent.mkdir(parents=True, exist_ok=True)
        for path in log_paths:
            if config.force and path.exists():
                path.unlink()
    except OSError as exc:
        raise ShapleyError(f"{prep.out}: cannot write here: {exc.strerror or exc}") from exc
    try:
        return _run(prep, config, requested, capped, fingerprint, log_paths, progress, model,
                    executor, evaluator, branch, figures)  # fmt: skip
    except BaseException:
        for path in new_logs:
            _remove_if_empty(path, [])
        _remove_if_empty(None, created)
        raise


def _document_groups(
    config: ShapleyConfig, n: int, task: Task, executor: ExecutorConfig | None, evaluator: Any
) -> int:
    """The document groups the run uses: 1 when the estimator resolves to ``exact`` (every
    coalition on the whole split: nothing to sample) or another sampler than ``stratified``;
    else ``config.document_groups``, or for ``auto`` :data:`AUTO_DOCUMENT_GROUPS` groups but at
    least 4 of the split's documents (or the task's own batches) in each, 1 when fewer than 2
    such groups fit, two pairs per group do not fit the budget or the evaluation is not local.
    An explicit count the executor or the budget cannot serve (two pairs per group) is refused
    before anything is written."""
    if config.document_groups == 1 or n < 2:
        return 1
    if config.estimator not in SAMPLES_DOCUMENTS:
        return 1  # an explicit count with another estimator is refused by ShapleyConfig
    budget = evaluation_budget(n, config.effective_budget(), config.permutations)
    if config.estimator is Estimator.AUTO and choose_estimator(n, budget) is Estimator.EXACT:
        return 1
    local = executor is None or executor.is_local
    shared_ok = evaluator is None or callable(getattr(evaluator, "document_groups", None))
    need = two_pairs_budget(n)  # two pairs per group (a standard error needs two), any G
    if config.document_groups is None:
        if not (local and shared_ok) or (budget is not None and budget < need):
            return 1
        units = task.document_units(config.split.value)
        return max(1, min(AUTO_DOCUMENT_GROUPS, units // 4)) if units >= 8 else 1
    if not (local and shared_ok):
        raise OptionError("--document-groups needs the local executor (not --executor ray)")
    if budget is not None and budget < need:
        raise ShapleyError(
            f"budget {budget} is too small for two antithetic pairs in each of the "
            f"{config.document_groups} document groups of {n} players (a standard error needs "
            f"two; at least {need} whole-split evaluations: a larger budget, or "
            "--document-groups 1)"
        )
    return config.document_groups


def group_log_paths(out: Path, groups: int) -> list[Path]:
    """The evaluation logs of a run over ``groups`` document groups: one per group, in
    ``<out>/evaluations.<groups>-groups/``."""
    folder = out / f"evaluations.{groups}-groups"
    return [folder / f"group-{g + 1:02d}.jsonl" for g in range(groups)]


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet (deepest first)."""
    missing = []
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _remove_if_empty(log_path: Path | None, created: list[Path]) -> None:
    """After a failed run: the evaluation log this run started, if it holds no evaluation, and
    the folders this run created if nothing else is left in them (a failure leaves no empty
    output behind)."""
    try:
        if log_path is not None and log_path.is_file() and log_path.read_bytes().count(b"\n") <= 1:
            log_path.unlink()
        for d in created:
            d.rmdir()  # only if empty (OSError otherwise: kept)
    except OSError:
        pass


def _run(
    prep: Prepared,
    config: ShapleyConfig,
    requested: ShapleyConfig,
    capped: str | None,
    fingerprint: str,
    log_paths: list[Path],
    progress: bool,
    model: Any,
    executor: ExecutorConfig | None,
    evaluator: Any,
    branch: str,
    figures: bool,
) -> ShapleyRunResult:
    from coto_tools.runtime.evaluator import Evaluator

    t0 = time.perf_counter()
    metrics = list(METRIC_NAMES)
    n = len(prep.players)
    own = evaluator is None
    if not own:
        _check_shared(evaluator, branch, prep, config)
    elif executor is None or executor.is_local:
        evaluator = Evaluator(
            prep.task,
            prep.adapter,
            split=config.split.value,
            batch_size=config.eval_batch_size,
            model=model,
            device=local_device(executor),
            dtype=local_dtype(executor),
        )
    else:  # the adapter is shipped by value: workers need not see the checkpoint
        from coto_tools.runtime.executor import EvaluatorSpec, make_evaluator
        from coto_tools.tasks import task_spec

        spec = EvaluatorSpec(
            task_spec(prep.task_name, prep.task_variant),
            (("default", prep.adapter),),
            split=config.split.value,
            batch_size=config.eval_batch_size,
        )
        evaluator = make_evaluator(spec, executor)
    doc_summary: dict[str, Any] | None = None
    try:
        if len(log_paths) > 1:
            grouped = _estimate_documents(
                prep, config, evaluator, branch, fingerprint, log_paths, progress
            )
            primary, results, inter, computed_now, from_log, doc_summary = grouped
        else:
            game = AdapterGame(evaluator, prep.players, metrics=metrics, adapter=branch)
            with EvaluationLog(log_paths[0], fingerprint, n) as log:
                from_log = len(log)
                bar = _EvalProgress(config, n, from_log) if progress else None
                cached = CachedGame(
                    game,
                    n,
                    metric=config.metric.value,
                    log=log,
                    chunk=config.batch_size,
                    on_computed=None if bar is None else bar.computed,
                )
                try:
                    primary = estimate_shapley(
                        cached,
                        n,
                        estimator=config.estimator,
                        budget=config.effective_budget(),
                        permutations=config.permutations,
                        tol=config.tol,
                        seed=config.seed,
                        progress=False if bar is None else bar.update,
                        batch_size=config.sample_batch,
                        player_names=prep.players.names,
                    )
                finally:
                    if bar is not None:
                        bar.close()
            results = {
                m: primary if m == config.metric.value else recompute(primary, cached, m)
                for m in metrics
            }
            inter = estimate_interactions(primary, cached) if config.interactions else None
            computed_now = game.n_evaluated
    finally:
        if own:
            evaluator.close()
    wall = time.perf_counter() - t0
    summary = {
        "checkpoint": str(prep.checkpoint),
        "weights_sha256": prep.weights_sha256,
        "task": prep.task_name,
        "task_variant": prep.task_variant,
        "split": config.split.value,
        "n_examples": int(getattr(evaluator, "n_examples", len(evaluator.labels))),
        "dtype": str(getattr(evaluator, "dtype", "float32")).removeprefix("torch."),
        "grouping": prep.players.grouping,
        "other": list(prep.players.other),
        # which adapter modules each player switches (a --players-map's rules beside them)
        "player_modules": {
            name: list(members)
            for name, members in zip(prep.players.names, prep.players.members, strict=True)
        },
        "players_map": (
            None
            if config.players_map is None
            else {"file": str(config.players_map), "rules": prep.players_map}
        ),
        "metric": config.metric.value,
        "estimator_requested": requested.estimator.value,
        "budget": config.effective_budget(),
        "budget_requested": requested.effective_budget(),
        "budget_note": capped,
        "permutations": config.permutations,
        "tol": config.tol,
        "seed": config.seed,
        "fingerprint": fingerprint,
        # of the coalitions this estimate used: those computed now, the rest came from the log
        "evaluations_from_log": max(0, primary.evaluations - computed_now),
        "evaluations_computed": computed_now,
        "log_entries_before": from_log,
        "document_groups": doc_summary,
        "wall_time_s": round(wall, 3),
    }
    files = write_outputs(
        prep.out, prep.players, results, config.metric.value, summary, figures=figures
    )
    if inter is not None:
        files |= write_interactions(prep.out, inter, prep.players.names, summary, figures=figures)
    return ShapleyRunResult(
        checkpoint=prep.checkpoint,
        config=config,
        players=prep.players,
        results=results,
        summary=summary,
        out=prep.out,
        files=files
        | {"log": log_paths[0]}
        | ({} if len(log_paths) == 1 else {"group_logs": log_paths[0].parent}),
        interactions=inter,
    )


def _estimate_documents(
    prep: Prepared,
    config: ShapleyConfig,
    evaluator: Any,
    branch: str,
    fingerprint: str,
    log_paths: list[Path],
    progress: bool,
) -> tuple[ShapleyResult, dict[str, ShapleyResult], Interactions | None, int, int, dict[str, Any]]:
    """``stratified`` over document groups (:mod:`coto_tools.shapley.documents`): one group
    evaluator, cache and log per group. Returns ``(primary, results by metric, interactions,
    whole-split evaluations computed now, log entries before, the summary's document_groups)``;
    evaluation counts are in whole-split evaluations (a group's weighted by its documents)."""
    from contextlib import ExitStack

    groups = len(log_paths)  # > 1 only for an evaluator with document_groups (_document_groups)
    n = len(prep.players)
    metrics = list(METRIC_NAMES)
    views = evaluator.document_groups(groups)
    try:
        docs = np.array([v.n_examples for v in views], dtype=np.float64)
        costs = docs / docs.sum()
        if uses_metric_sums(prep.task):  # a metric per token: weigh by the tokens
            empty = [v.value({}).n for v in views]
            weights = np.asarray(empty, dtype=np.float64)
        else:
            weights = docs.copy()
        weights = weights / weights.sum()
        with ExitStack() as stack:
            logs = [
                stack.enter_context(
                    EvaluationLog(path, f"{fingerprint}:documents {g + 1}/{groups}", n)
                )
                for g, path in enumerate(log_paths)
            ]
            from_log = float(np.dot(costs, [len(log) for log in logs]))
            bar = _EvalProgress(config, n, round(from_log)) if progress else None
            games = [AdapterGame(v, prep.players, metrics=metrics, adapter=branch) for v in views]
            caches = [
                CachedGame(
                    game,
                    n,
                    metric=config.metric.value,
                    log=log,
                    chunk=config.batch_size,
                    on_computed=None if bar is None else _scaled(bar.computed, float(c)),
                )
                for game, log, c in zip(games, logs, costs, strict=True)
            ]
            try:
                grouped = estimate_documents(
                    caches,
                    weights,
                    SamplingConfig(
                        budget=config.effective_budget(),
                        permutations=config.permutations,
                        tol=config.tol,
                        seed=config.seed,
                        batch_size=config.sample_batch,
                    ),
                    costs=costs,
                    progress=False if bar is None else bar.update,
                    player_names=prep.players.names,
                )
            finally:
                if bar is not None:
                    bar.close()
        primary = grouped.combined
        results = {config.metric.value: primary}
        for m in metrics:
            if m != config.metric.value:
                per = [recompute(r, c, m) for r, c in zip(grouped.groups, caches, strict=True)]
                results[m] = combine_results(per, weights, costs=costs)
        inter = None
        if config.interactions:
            inter = combine_interactions(
                [estimate_interactions(r, c) for r, c in zip(grouped.groups, caches, strict=True)],
                weights,
                costs=costs,
            )
    finally:
        for v in views:
            v.close()
    summary = {
        "groups": groups,
        "documents": [int(d) for d in docs],
        "weights": [round(float(x), 6) for x in weights],
        "pairs": [r.n_samples for r in grouped.groups],
        "group_evaluations": grouped.group_evaluations,
        "split_evaluations": round(grouped.split_evaluations, 3),
        "logs": str(log_paths[0].parent),
    }
    return primary, results, inter, primary.computed, round(from_log), summary


def _scaled(callback: Any, factor: float) -> Any:
    """``k -> callback(k * factor)``: a group's coalitions counted in whole-split evaluations."""

    def call(k: int) -> None:
        callback(k * factor)

    return call


def _check_shared(evaluator: Any, branch: str, prep: Prepared, config: ShapleyConfig) -> None:
    """Refuse a shared evaluator that is not on the checkpoint's task and split or whose
    ``branch`` is not the checkpoint's adapter bit for bit (its numbers would be another's)."""
    import torch

    held = getattr(evaluator, "adapters", {}).get(branch)
    task = getattr(evaluator, "task", None)
    if getattr(evaluator, "split", None) != config.split.value or task is None:
        raise ShapleyError(f"shared evaluator: not on the {config.split.value} split")
    if getattr(task, "name", None) != getattr(prep.task, "name", None) or getattr(
        task, "variant", None
    ) != getattr(prep.task, "variant", None):
        raise ShapleyError(f"shared evaluator: task {task.name}, checkpoint's {prep.task.name}")
    batches = getattr(evaluator, "batches", None)
    if batches and len(batches[0]) != min(config.eval_batch_size, len(evaluator.labels)):
        raise ShapleyError(f"shared evaluator: batches of other than {config.eval_batch_size}")
    ok = held is not None and set(held.modules) == set(prep.adapter.modules)
    if ok and held is not None:
        for name, m in prep.adapter.modules.items():
            o = held.modules[name]
            if (m.alpha, m.use_rslora) != (o.alpha, o.use_rslora) or not (
                torch.equal(m.A, o.A) and torch.equal(m.B, o.B)
            ):
                ok = False
                break
    if not ok:
        raise ShapleyError(
            f"shared evaluator: branch {branch!r} is not the adapter of {prep.checkpoint}"
        )


def shapley_runs(
    checkpoints: Sequence[str | Path],
    config: ShapleyConfig,
    *,
    progress: bool = False,
    executor: ExecutorConfig | None = None,
) -> list[ShapleyRunResult]:
    """Run several checkpoints (each into its own ``<checkpoint>/shapley``); every checkpoint is
    checked before the first one runs. ``config.out`` must be ``None`` here."""
    if config.out is not None and len(checkpoints) > 1:
        raise OptionError("with several checkpoints each writes to <checkpoint>/shapley")
    prepared = [prepare(c, config) for c in checkpoints]
    outs = [p.out.resolve() for p in prepared]
    if len(set(outs)) != len(outs):
        raise OptionError("two checkpoints would write to the same output directory")
    return [shapley_run(p, config, progress=progress, executor=executor) for p in prepared]
