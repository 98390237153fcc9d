"""``coto-tools lmc A B``: linear mode connectivity between adapters (paths, barriers, planes)."""

from __future__ import annotations

from pathlib import Path

import typer

from coto_tools.cli._app import THREADS, app, apply_threads, quiet_loading
from coto_tools.cli.shapley import DEVICE, DTYPE, EXECUTOR, RAY_ADDRESS, WORKERS
from coto_tools.errors import OptionError
from coto_tools.lmc.run import LmcConfig, Mode, run_lmc, write_outputs
from coto_tools.lmc.space import SpaceChoice
from coto_tools.runtime.executor import ExecutorKind, executor_from_cli
from coto_tools.tasks import options as user_opts

_D = LmcConfig(groups=((Path("a"), Path("b")),))  # the library's defaults, shown in --help


def parse_checkpoint_args(args: list[str]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """Split the free arguments into positional checkpoints and ``--pair A B`` groups.

    (typer cannot declare a repeatable two-value option, so ``--pair`` is parsed here.)
    """
    positional: list[Path] = []
    pairs: list[tuple[Path, Path]] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--pair":
            vals = args[i + 1 : i + 3]
            if len(vals) != 2 or any(v.startswith("-") for v in vals):
                raise OptionError("--pair takes two checkpoints: --pair A B")
            pairs.append((Path(vals[0]), Path(vals[1])))
            i += 3
            continue
        if tok.startswith("-") and tok != "-":
            raise OptionError(f"no such option: {tok.split('=')[0]} (see coto-tools lmc --help)")
        positional.append(Path(tok))
        i += 1
    return positional, pairs


@app.command(
    "lmc",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    options_metavar="CHECKPOINT... [--pair A B]... [OPTIONS]",
)
def lmc_cmd(
    ctx: typer.Context,
    label: list[str] | None = typer.Option(
        None,
        "--label",
        help="Curve label, once per pair/curve (plane: per corner). "
        "Default: coto.json's method and seed.",
    ),
    points: int = typer.Option(_D.points, "--points", help="Points on [0, 1] (0.5 always added)."),
    space: SpaceChoice | None = typer.Option(
        None,
        "--space",
        help="delta (gated branches), factor (A, B interpolated) or both [default: both; "
        "--plane: delta only].",
    ),
    task: str | None = typer.Option(
        None, "--task", help="Evaluate on this task (default: the checkpoints' coto.json task)."
    ),
    split: str = typer.Option(_D.split, "--split", help="eval or quick."),
    from_zero: bool = typer.Option(
        False, "--from-zero", help="Path base model (0) -> each adapter (1) -> --max-scale."
    ),
    max_scale: float = typer.Option(_D.max_scale, "--max-scale", help="End of a --from-zero path."),
    plane: bool = typer.Option(False, "--plane", help="Plane through 3 adapters (delta space)."),
    grid: int = typer.Option(_D.grid, "--grid", help="Plane grid points per edge."),
    margin: float = typer.Option(
        _D.margin, "--margin", help="Plane: extend past each side by this fraction of an edge."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (default: lmc/ in the first checkpoint's dir)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    threads: int = THREADS,
    # -- user task (issue 7): own model + data, or a plugin --
    base_model: str | None = user_opts.BASE_MODEL,
    data: Path | None = user_opts.DATA,
    label_prompts: str | None = user_opts.LABEL_PROMPTS,
    max_length: int = user_opts.MAX_LENGTH,
    batch_size: int = user_opts.BATCH_SIZE,
    limit: int | None = user_opts.LIMIT,
    task_plugin: str | None = user_opts.TASK_PLUGIN,
    executor: ExecutorKind = EXECUTOR,
    ray_address: str | None = RAY_ADDRESS,
    workers: int | None = WORKERS,
    device: str = DEVICE,
    dtype: str = DTYPE,
) -> None:
    """Evaluate the model along the line between adapters A (a=0) and B (a=1).

    Checkpoints: `lmc A B`, or several pairs in one figure with `--pair A B --pair C D`;
    `lmc A [B ...] --from-zero` (one curve per adapter); `lmc A B C --plane`. Writes lmc.csv,
    lmc.json (barriers per pair and space, midpoints, endpoints) and lmc.png (plane:
    lmc_plane.csv, lmc.json, lmc_plane.png). Loss barrier: max_a L(a) - ((1-a) L_A + a L_B);
    accuracy barrier: max_a ((1-a) Acc_A + a Acc_B) - Acc(a) (Entezari et al., arXiv 2110.06296).
    """
    apply_threads(threads)
    positional, pairs = parse_checkpoint_args(list(ctx.args))
    run_on = executor_from_cli(executor, ray_address, workers, device, dtype)
    quiet_loading(quiet)
    if from_zero and plane:
        raise OptionError("--from-zero and --plane cannot be combined")
    if plane and space not in (None, SpaceChoice.delta):
        raise OptionError(f"--plane is delta space only, got --space {space.value}")
    if plane:
        if pairs or len(positional) != 3:
            raise OptionError(f"--plane needs exactly 3 checkpoints, got {len(positional)}")
        mode, groups = Mode.plane, [tuple(positional)]
    elif from_zero:
        if pairs:
            raise OptionError("--from-zero takes checkpoints, not --pair")
        mode, groups = Mode.from_zero, [(p,) for p in positional]
    else:
        if positional and len(positional) != 2:
            raise OptionError(
                f"give 2 checkpoints A B (got {len(positional)}); more pairs with --pair A B, "
                "three adapters with --plane"
            )
        mode, groups = Mode.pairs, ([tuple(positional)] if positional else []) + list(pairs)
    user = user_opts.UserTaskArgs(
        base_model, data, label_prompts, max_length, batch_size, limit, task_plugin
    )
    task = user_opts.user_task_spec(user, [p for g in groups for p in g], task=task)
    config = LmcConfig(
        groups=tuple(groups),
        mode=mode,
        labels=tuple(label or ()),
        points=points,
        space=space,
        task=task,
        split=split,
        max_scale=max_scale,
        grid=grid,
        margin=margin,
        out=out,
        force=force,
    )
    run = run_lmc(config, progress=not quiet, executor=run_on)
    paths = write_outputs(run)
    for res in run.results:
        for sp, bars in res.barriers().items():
            typer.echo(
                f"{res.label} [{sp.value}]: loss barrier {bars['loss'].height:.4g}, "
                f"accuracy barrier {bars['accuracy'].height:.4g}, "
                f"midpoint accuracy {bars['accuracy'].midpoint:.4f}"
            )
    if run.plane is not None:
        for name, m in run.plane.corners().items():
            typer.echo(f"{name}: accuracy {m.accuracy:.4f}, loss {m.loss:.4f}")
    typer.echo(f"wrote {', '.join(str(p) for p in paths)}")
