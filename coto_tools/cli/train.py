"""``coto-tools train --task T --method coto|lora --seed S --out DIR``: train one adapter."""

from __future__ import annotations

from pathlib import Path

import typer

from coto_tools.adapters.outguard import check_output, task_files
from coto_tools.cli._app import THREADS, app, apply_threads
from coto_tools.tasks.presets import preset_for
from coto_tools.train.config import GroupBy, Method, TrainConfig
from coto_tools.train.lr import LrSchedule
from coto_tools.train.schedule import Shape

_D = TrainConfig(task="-")  # the library's defaults, shown in --help


@app.command("train")
def train_cmd(
    task: str = typer.Option(..., "--task", help="Task name, e.g. bbc-topic, bbc-a, bbc-b."),
    out: Path = typer.Option(..., "--out", help="Run directory to create (adapter + coto.json)."),
    method: Method = typer.Option(_D.method, "--method", help="coto, or lora (p = 1 throughout)."),
    seed: int = typer.Option(_D.seed, "--seed", help="Seeds init, data order, gates, dropout."),
    steps: int | None = typer.Option(
        None,
        "--steps",
        help=f"Optimisation steps [default: the task's measured preset, else {_D.steps}].",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help=f"[default: the task's preset, else {_D.batch_size}]"
    ),
    lr: float | None = typer.Option(
        None, "--lr", help=f"Peak learning rate (AdamW) [default: the preset's, else {_D.lr:g}]."
    ),
    lr_schedule: LrSchedule = typer.Option(
        _D.lr_schedule, "--lr-schedule", help="After warm-up: constant, or cosine to a floor."
    ),
    lr_floor: float = typer.Option(_D.lr_floor, "--lr-floor", help="Cosine floor, fraction of lr."),
    warmup_ratio: float = typer.Option(_D.warmup_ratio, "--warmup-ratio"),
    weight_decay: float = typer.Option(_D.weight_decay, "--weight-decay"),
    rank: int = typer.Option(_D.rank, "--rank"),
    alpha: float = typer.Option(_D.alpha, "--alpha"),
    targets: str | None = typer.Option(
        None,
        "--targets",
        help="Comma list of kinds (q,k,v,o,...) or module names; default: the task's.",
    ),
    schedule: Shape = typer.Option(_D.schedule, "--schedule", help="Shape of p(t) in stage 1."),
    stage1_ratio: float = typer.Option(_D.stage1_ratio, "--stage1-ratio", help="p reaches 1 here."),
    p_start: float = typer.Option(
        _D.p_start, "--p-start", help="Activation probability at step 0."
    ),
    group: GroupBy = typer.Option(
        _D.group, "--group", help="One coin flip per layer or per module."
    ),
    lora_dropout: float = typer.Option(_D.lora_dropout, "--lora-dropout"),
    shots: int | None = typer.Option(
        None, "--shots", help="Few-shot: K training examples per class."
    ),
    eval_split: str = typer.Option(_D.eval_split, "--eval-split", help="eval or quick."),
    dtype: str = typer.Option(
        "auto",
        "--dtype",
        help="Base model dtype while training: auto (float32: training runs on the CPU), "
        "float32, bfloat16 or float16. The adapter stays float32 (its branches run in float32, "
        "as in PEFT); the recorded metrics are measured in this dtype.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace DIR if it exists and coto-tools wrote it."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    threads: int = THREADS,
) -> None:
    """Train a LoRA adapter with CoTo (arXiv 2506.05713) or plainly, and write a run directory."""
    from coto_tools.train.loop import train

    check_output(out, task_files(task), force=force)  # refuse before spending minutes training
    variant = {} if shots is None else {"shots": shots}
    preset = preset_for(task, variant)  # measured steps/batch/lr for the task's default variant
    steps = steps if steps is not None else (preset.steps if preset else _D.steps)
    batch_size = (
        batch_size if batch_size is not None else (preset.batch_size if preset else _D.batch_size)
    )
    lr = lr if lr is not None else (preset.lr if preset else _D.lr)
    config = TrainConfig(
        task=task,
        method=method,
        seed=seed,
        task_variant=variant,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_ratio=warmup_ratio,
        lr_schedule=lr_schedule,
        lr_floor=lr_floor,
        rank=rank,
        alpha=alpha,
        targets=None if targets is None else tuple(targets.split(",")),
        schedule=schedule,
        stage1_ratio=stage1_ratio,
        p_start=p_start,
        group=group,
        lora_dropout=lora_dropout,
        eval_split=eval_split,
        dtype=dtype,
    )
    apply_threads(threads)
    result = train(config, progress=not quiet)
    result.save(out, force=force)
    m, z = result.metrics, result.zero_shot
    typer.echo(
        f"{out}: {config.method.value} seed {config.seed}, {config.steps} steps "
        f"({config.dtype}) in "
        f"{result.wall_time_s:.1f} s; {config.eval_split} accuracy {m.accuracy:.4f} "
        f"(zero-shot {z.accuracy:.4f}), loss {m.loss:.4f} (zero-shot {z.loss:.4f})"
    )
