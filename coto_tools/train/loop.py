"""A minimal CoTo / LoRA training loop over a :class:`~coto_tools.tasks.base.Task`.

CoTo (arXiv 2506.05713) in four steps per training step ``t``:

1. draw the active groups: each group (one layer's adapters, or one module) is on with
   probability ``p(t)`` (:class:`~coto_tools.train.schedule.CoToSchedule`), at least one on;
2. set gates: active adapters 1.0, inactive exactly 0.0, so the runtime skips their branch
   (no compute, no autograd graph);
3. forward a batch, cross-entropy of ``task.logits``, backward: inactive adapters keep
   ``grad = None`` (gradients are cleared with ``zero_grad(set_to_none=True)``);
4. AdamW step: torch's AdamW skips parameters whose grad is None, so an inactive adapter's
   weights *and* its moment estimates stay as they were (no momentum drift).

``method = lora`` is the same loop with every adapter on at every step (vanilla LoRA).
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.adapters.players import Players, make_players
from coto_tools.errors import CotoError, OptionError
from coto_tools.runtime.dtype import DTYPES, dtype_name
from coto_tools.runtime.gated import GatedModel, fresh_adapter, inject
from coto_tools.tasks.base import Batch, Metrics, Task
from coto_tools.train.config import Method, TrainConfig
from coto_tools.train.lr import LrPlan
from coto_tools.train.run import LOG_FIELDS as LOG_FIELDS  # re-exported: its old home
from coto_tools.train.run import LogRow, TrainResult, make_record
from coto_tools.train.sampler import EpochSampler
from coto_tools.train.schedule import CoToSchedule
from coto_tools.train.targets import resolve_targets


def build_task(config: TrainConfig) -> Task:
    """``get_task(config.task, **config.task_variant)``."""
    from coto_tools.tasks import get_task

    return get_task(config.task, **dict(config.task_variant))


def activation_schedule(config: TrainConfig) -> CoToSchedule:
    """The run's ``p(t)``; ``method = lora`` is ``p_start = 1`` (p = 1 at every step)."""
    if config.method is Method.lora:
        return CoToSchedule(config.steps, p_start=1.0, stage1_ratio=0.0)
    return CoToSchedule(
        config.steps,
        p_start=config.p_start,
        stage1_ratio=config.stage1_ratio,
        shape=config.schedule,
    )


def base_model_id(task: Task) -> str | None:
    """The task's base model identifier, for ``base_model_name_or_path`` (None if unknown)."""
    for attr in ("base_model_id", "model_id", "base_model", "model_name"):
        v = getattr(task, attr, None)
        if isinstance(v, str) and v:
            return v
    return None


def final_metrics(
    task: Task,
    adapter: LoraAdapter,
    split: str,
    *,
    model: torch.nn.Module | None = None,
    zero_shot: Metrics | None = None,
) -> tuple[Metrics, Metrics]:
    """(all adapters on, zero-shot) metrics on ``split`` through the project's evaluator.

    The same :class:`~coto_tools.runtime.evaluator.Evaluator` later analyses use, so the
    recorded numbers are the ones ``shapley``/``prune`` see for "all" and "none".
    ``zero_shot``: the base model's metrics on ``split`` of this task when already measured
    (by another run of the task: they do not depend on the adapter); returned as given.
    """
    from coto_tools.runtime.evaluator import Evaluator

    ev = Evaluator(task, adapter, split=split, model=model)
    try:
        on = ev.value(dict.fromkeys(adapter.modules, 1.0))
        off = ev.value({}) if zero_shot is None else zero_shot
    finally:
        ev.close()
    return on, off


def _seeds(seed: int) -> tuple[torch.Generator, np.random.Generator, np.random.Generator, int]:
    """Independent streams from one seed: adapter init, data order, gate draws, torch (dropout)."""
    init_ss, data_ss, gate_ss, torch_ss = np.random.SeedSequence(seed).spawn(4)
    init = torch.Generator().manual_seed(int(init_ss.generate_state(1, np.uint64)[0] >> 1))
    data = np.random.default_rng(data_ss)
    gates = np.random.default_rng(gate_ss)
    return init, data, gates, int(torch_ss.generate_state(1, np.uint64)[0] >> 1)


def _players(handle: GatedModel, config: TrainConfig) -> Players:
    return make_players(handle.modules_of(), config.group.value)


def train_step(
    task: Task, model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Batch
) -> float:
    """One optimisation step with the gates as set; returns the batch's mean cross-entropy.

    Gradients are cleared to ``None`` first, so a branch skipped by its gate (exactly 0.0) ends
    the step with ``grad is None`` and AdamW leaves its weights and moments untouched. A
    non-finite loss skips the update.
    """
    opt.zero_grad(set_to_none=True)
    logits = task.logits(model, batch)
    loss = F.cross_entropy(logits.float(), batch.labels)
    value = float(loss.detach())
    if not math.isfinite(value):
        return value
    loss.backward()
    opt.step()
    return value


def train(
    config: TrainConfig,
    *,
    task: Task | None = None,
    model: torch.nn.Module | None = None,
    zero_shot: Metrics | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a fresh LoRA adapter on ``config.task`` with CoTo or plain LoRA.

    The base model is ``task.build_model_in(config.dtype)`` (frozen; float32 unless
    ``config.dtype`` says otherwise); the adapter is initialised as PEFT does (``A``
    Kaiming-uniform, ``B = 0``, float32 in every dtype) from the run's seed. Same config and
    seed, same adapter bit for bit (on the same machine and torch build). ``task`` overrides
    building it from the config's name (the record still names ``config.task``). ``model``:
    that task's base model to train on instead of building one, in ``config.dtype`` (it is
    handed back as it came: the adapter is removed, which restores the base bit for bit). The
    recorded metrics are measured on the training model, in its dtype. ``zero_shot``: the base
    model's metrics on ``config.eval_split`` of this task, when another run already measured
    them (recorded as given instead of evaluated again).
    """
    # Global torch RNG (dropout, and anything the task's model building draws) is seeded from
    # the run's seed inside a fork, so the caller's RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seeds(config.seed)[3])
        return _train(config, task, progress, model, zero_shot)


def _train(
    config: TrainConfig,
    task: Task | None,
    progress: bool,
    base: torch.nn.Module | None = None,
    zero_shot: Metrics | None = None,
) -> TrainResult:
    t0 = time.perf_counter()
    task = build_task(config) if task is None else task
    want = DTYPES[config.dtype]
    model = task.build_model_in(want) if base is None else base
    have = next((p.dtype for p in model.parameters() if p.is_floating_point()), want)
    if have != want:
        raise OptionError(
            f"train: the given base model is {dtype_name(have)}, the config asks for "
            f"{config.dtype}; build it in {config.dtype} or set TrainConfig(dtype=...)"
        )
    for prm in model.parameters():
        prm.requires_grad_(False)
    targets = resolve_targets(model, task.default_targets(), config.targets)
    init_gen, data_rng, gate_rng, _ = _seeds(config.seed)
    fresh = fresh_adapter(model, targets, rank=config.rank, alpha=config.alpha, generator=init_gen)
    handle = inject(model, fresh, trainable=True)
    handle.set_dropout(config.lora_dropout)
    players = _players(handle, config)
    schedule = activation_schedule(config)
    lr_plan = LrPlan(
        config.lr,
        config.steps,
        warmup_steps=config.warmup_steps,
        schedule=config.lr_schedule,
        floor=config.lr_floor,
    )
    params = handle.parameters()
    opt = torch.optim.AdamW(params, lr=lr_plan(0), weight_decay=config.weight_decay)
    sampler = EpochSampler(task.train_size(), config.batch_size, data_rng)

    model.eval()  # the frozen base keeps its dropout off; only the LoRA branches train
    for w in handle.layers.values():
        w.train()
    rows: list[LogRow] = []
    t_loop = time.perf_counter()
    bar = tqdm(range(config.steps), disable=not progress, file=sys.stderr, desc="train")
    for step in bar:
        p = schedule.p(step)
        mask = schedule.sample(step, len(players), gate_rng)
        handle.set_gates(players.gates(mask))
        lr = lr_plan(step)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = train_step(task, model, opt, task.train_batch(sampler.next()))
        if not math.isfinite(loss):
            raise CotoError(
                f"training diverged at step {step}: loss {loss} (lr {lr:g}); lower --lr"
            )
        names = [n for n, on in zip(players.names, mask, strict=True) if on]
        rows.append(LogRow(step, loss, p, len(names), " ".join(names), lr))
        if progress:
            bar.set_postfix(loss=f"{loss:.3f}", p=f"{p:.2f}", on=len(names))
    bar.close()
    opt.zero_grad(set_to_none=True)
    train_time = time.perf_counter() - t_loop

    base_id = base_model_id(task)
    adapter = handle.extract(
        config={"lora_dropout": config.lora_dropout, "base_model_name_or_path": base_id},
        source=f"<trained {config.task} {config.method.value} seed {config.seed}>",
    )
    model = handle.remove()
    metrics, zero_shot = final_metrics(
        task, adapter, config.eval_split, model=model, zero_shot=zero_shot
    )
    wall = time.perf_counter() - t0
    record = make_record(
        config,
        task=task,
        base_model=base_id,
        targets=targets,
        players=players,
        schedule=schedule,
        lr_plan=lr_plan,
        batch_size=sampler.batch_size,
        metrics=metrics,
        zero_shot=zero_shot,
        wall_time_s=wall,
        train_time_s=train_time,
        log=rows,
    )
    return TrainResult(adapter, config, metrics, zero_shot, tuple(rows), record, wall)
