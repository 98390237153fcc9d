"""``coto-tools prune CKPT [CKPT ...]``: pruning-robustness sweeps and report (arXiv 2506.05713)."""

from __future__ import annotations

from pathlib import Path

import typer

from coto_tools.cli._app import THREADS, app, apply_threads, quiet_loading
from coto_tools.cli.shapley import DEVICE, DTYPE, EXECUTOR, RAY_ADDRESS, WORKERS
from coto_tools.errors import OptionError
from coto_tools.prune.run import PruneConfig
from coto_tools.runtime.executor import ExecutorKind, executor_from_cli
from coto_tools.tasks import options as user_opts

_D = PruneConfig(checkpoints=(Path("a"),))  # the library's defaults, shown in --help


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise OptionError(
            f"{what} {text!r}: expected a comma list of integers, e.g. 0,1,2"
        ) from None


@app.command("prune")
def prune_cmd(
    checkpoints: list[Path] = typer.Argument(
        ..., metavar="CHECKPOINT", help="Run directories or adapter checkpoints."
    ),
    label: list[str] | None = typer.Option(
        None, "--label", help="Label per checkpoint, in order (default: coto.json's method)."
    ),
    task: str | None = typer.Option(None, "--task", help="Override the checkpoints' task."),
    split: str = typer.Option(_D.split, "--split", help="eval or quick."),
    metric: str = typer.Option(
        _D.metric,
        "--metric",
        help="Metric for curves, AUC and the report: accuracy, logprob, loss.",
    ),
    strategies: str | None = typer.Option(
        None,
        "--strategies",
        help="Comma list: all, none, everyother, everyother-even/-odd, low, middle, high, "
        "kind:<k> (query/key/value/q/k/v/o/...), shapley-top:<f>, shapley-bottom:<f>, "
        "norm-top:<f>, random:<f>. Default: all,everyother,low,middle,high,query,key,value.",
    ),
    shapley: list[Path] | None = typer.Option(
        None,
        "--shapley",
        help="shapley.csv (player,value,...): one for all checkpoints or one each.",
    ),
    players_map: Path | None = typer.Option(
        None,
        "--players-map",
        help='JSON {"regex": "player", ...} the --shapley values were computed with (shapley '
        "--players-map): shapley-top/-bottom and the Shapley sweeps rank those players.",
    ),
    steps: int = typer.Option(_D.steps, "--steps", help="Fraction-sweep steps from 0 to 1."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds of random strategies and orders."),
    ranks: str | None = typer.Option(
        None, "--ranks", help="Ranks of the rank sweep (default: r, r/2, ..., 1)."
    ),
    no_curves: bool = typer.Option(False, "--no-curves", help="Skip the fraction sweeps."),
    no_rank_sweep: bool = typer.Option(False, "--no-rank-sweep", help="Skip the rank sweep."),
    write_pruned: str | None = typer.Option(
        None, "--write-pruned", help="Write the adapter STRATEGY keeps to --out (no evaluation)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: prune/ in the first checkpoint's dir)."
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
    """Evaluate pruning strategies, fraction sweeps and rank truncation; write prune.csv,
    prune_curves.csv, prune_auc.csv, prune_strategies.png, prune_curves.png, prune_report.md."""
    apply_threads(threads)
    seed_list = _ints(seeds, "--seeds") or ()
    run_on = executor_from_cli(executor, ray_address, workers, device, dtype)
    quiet_loading(quiet)
    if write_pruned is not None:
        from coto_tools.prune.outputs import write_pruned as write

        if len(checkpoints) != 1:
            raise OptionError("--write-pruned takes exactly one checkpoint")
        if out is None:
            raise OptionError("--write-pruned needs --out OUT")
        if shapley and len(shapley) > 1:
            raise OptionError("--write-pruned takes one --shapley file")
        path, kept = write(
            checkpoints[0],
            write_pruned,
            out,
            shapley=shapley[0] if shapley else None,
            seed=seed_list[0] if seed_list else 0,
            force=force,
            players_map=players_map,
        )
        typer.echo(f"{path}: kept {len(kept)} adapter module(s) ({write_pruned})")
        return
    from coto_tools.prune.outputs import check_outputs, write_outputs
    from coto_tools.prune.run import run_prune

    user = user_opts.UserTaskArgs(
        base_model, data, label_prompts, max_length, batch_size, limit, task_plugin
    )
    task = user_opts.user_task_spec(user, checkpoints, task=task)

    config = PruneConfig(
        checkpoints=tuple(checkpoints),
        labels=tuple(label or ()),
        task=task,
        split=split,
        metric=metric,
        strategies=None if strategies is None else tuple(strategies.split(",")),
        steps=steps,
        seeds=seed_list,
        ranks=_ints(ranks, "--ranks"),
        curves=not no_curves,
        rank_sweep=not no_rank_sweep,
        shapley=tuple(shapley or ()),
        out=out,
        force=force,
        players_map=players_map,
    )
    check_outputs(config)
    result = run_prune(config, progress=not quiet, executor=run_on)
    paths = write_outputs(result)
    typer.echo(f"{config.out_dir()}: wrote {', '.join(p.name for p in paths)}")
