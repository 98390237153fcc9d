"""``coto-tools shapley CKPT [CKPT ...]``: Shapley values of a checkpoint's adapters."""

from __future__ import annotations

from pathlib import Path

import typer

from coto_tools.adapters.players import Grouping
from coto_tools.cli._app import THREADS, app, apply_threads, quiet_loading
from coto_tools.runtime.executor import ExecutorKind, executor_from_cli
from coto_tools.shapley.registry import Estimator
from coto_tools.shapley.run import DEFAULT_BUDGET, Metric, ShapleyConfig, ShapleyRunResult, Split
from coto_tools.tasks import options as user_opts

_D = ShapleyConfig()  # the library's defaults, shown in --help

# -- where evaluations run (issue 11); shared by shapley, prune, lmc and reproduce --
# (each command turns them into an ExecutorConfig with executor_from_cli)
EXECUTOR = typer.Option(
    ExecutorKind.local,
    "--executor",
    help="local: this process; ray: a pool of Ray actors, one model replica each (pip install "
    "'coto-tools[ray]'). Same numbers either way.",
)
RAY_ADDRESS = typer.Option(
    None,
    "--ray-address",
    help="Ray cluster address (auto: the cluster this node joined; default: start a local Ray).",
)
WORKERS = typer.Option(
    None, "--workers", help="Ray actors (default: one per GPU, else one per CPU)."
)
DEVICE = typer.Option(
    "auto",
    "--device",
    help="auto (cuda when available, else cpu), cpu, cuda or cuda:N. With --executor ray: "
    "auto/cuda give each worker one GPU of the cluster (cuda:N is refused), cpu uses none.",
)

DTYPE = typer.Option(
    "auto",
    "--dtype",
    help="Base model dtype: auto (float32 on the CPU, the model config's dtype on CUDA), "
    "float32, bfloat16 or float16. Adapter branches of a bfloat16/float16 model run in float32, "
    "as in PEFT.",
)
PLAYERS_MAP = typer.Option(
    None,
    "--players-map",
    help='JSON {"regex": "player", ...}: players by regular expressions on module names '
    "(first match wins; unmatched modules form the player 'other'); replaces --players.",
)


@app.command("shapley")
def shapley_cmd(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Run directories from coto-tools train (or PEFT dirs with --task)."
    ),
    players: Grouping = typer.Option(
        _D.players, "--players", help="A player is one module, one layer, one kind or one tower."
    ),
    metric: Metric = typer.Option(
        _D.metric, "--metric", help="Value of a coalition (all three are recorded)."
    ),
    estimator: Estimator = typer.Option(
        _D.estimator,
        "--estimator",
        help="auto: exact when 2^n <= budget (n <= 16), else stratified (antithetic pairs "
        "balanced over positions, with position control variates; on groups of documents, see "
        "--document-groups).",
    ),
    budget: int | None = typer.Option(
        None,
        "--budget",
        help=f"Most distinct coalitions evaluated, counted in whole-split evaluations (with "
        "document groups a group's evaluation counts its share of the documents) [default: "
        f"{DEFAULT_BUDGET}; one evaluation of the 400-document eval split takes about 1.1-1.4 s "
        "on 2 idle cores (the default run of a bbc-topic checkpoint: 9 min 20 s in 12 document "
        "groups, 6 min 20 s with --document-groups 1); --split quick (128 documents) is about "
        "2.5x faster].",
        show_default=False,
    ),
    permutations: int | None = typer.Option(
        None, "--permutations", help="Budget in permutations instead of evaluations."
    ),
    tol: float | None = typer.Option(
        None, "--tol", help="Stop early when max standard error / value range < TOL."
    ),
    seed: int = typer.Option(_D.seed, "--seed", help="Seed of the sampled permutations."),
    split: Split = typer.Option(_D.split, "--split", help="Evaluation split of the task."),
    task: str | None = typer.Option(
        None, "--task", help="Task name (default: the checkpoint's coto.json)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Output directory (default: shapley/ in the checkpoint dir). With several "
        "checkpoints: where the combined heatmap goes (default: shapley_compare/ beside the "
        "first checkpoint); each checkpoint's own outputs go to its shapley/.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Discard the evaluation log and start over (default: resume)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    interactions: bool = typer.Option(
        False,
        "--interactions",
        help="Also pairwise Faith-Shap interactions (< 0: two players stand in for each other) "
        "from the same coalitions: interactions.csv/.json, interaction_heatmap.png; several "
        "checkpoints: interaction_heatmaps.png on one colour scale.",
    ),
    document_groups: str = typer.Option(
        "auto",
        "--document-groups",
        metavar="auto|G",
        help="Sample the documents too: deal the split into G groups, run stratified on each "
        "(antithetic pairs to the groups in turn) and add them up; the budget counts whole-split "
        "evaluations and must give each group two pairs (2 + 4 (n - 1)). auto: 12 groups (at "
        "least 4 documents each) when sampling on this machine and that fits, else 1; 1: every "
        "coalition on the whole split.",
    ),
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
    players_map: Path | None = PLAYERS_MAP,
) -> None:
    """Shapley values of adapters: v(S) = task metric with only the adapters of players S on.

    Writes shapley.csv, shapley.json, shapley_heatmap.png, shapley_convergence.png and
    evaluations.jsonl (append-only; rerunning the same command resumes, evaluating nothing
    twice). Several checkpoints: each gets its own outputs, plus shapley_heatmaps.png (one
    colour scale) in --out.
    """
    from coto_tools.shapley.interaction_outputs import write_interaction_comparison
    from coto_tools.shapley.outputs import write_comparison
    from coto_tools.shapley.run import shapley_run, shapley_runs

    several = len(checkpoints) > 1
    user = user_opts.UserTaskArgs(
        base_model, data, label_prompts, max_length, batch_size, limit, task_plugin
    )
    task = user_opts.user_task_spec(user, checkpoints, task=task)
    config = ShapleyConfig(
        players=players,
        metric=metric,
        estimator=estimator,
        budget=budget,
        permutations=permutations,
        tol=tol,
        seed=seed,
        split=split,
        task=task,
        out=None if several else out,
        force=force,
        players_map=players_map,
        interactions=interactions,
        document_groups=_groups_option(document_groups),
    )
    run_on = executor_from_cli(executor, ray_address, workers, device, dtype)
    apply_threads(threads)
    quiet_loading(quiet)
    if several:
        from coto_tools.adapters.outguard import check_output

        head = checkpoints[0] if checkpoints[0].name not in ("", "..") else checkpoints[0].resolve()
        check_output(  # the combined figure's folder, checked before any run
            out if out is not None else head.parent / "shapley_compare",
            checkpoints,
            replaces=False,
        )
        runs = shapley_runs(checkpoints, config, progress=not quiet, executor=run_on)
    else:
        runs = [shapley_run(checkpoints[0], config, progress=not quiet, executor=run_on)]
    for r in runs:
        p, s = r.primary, r.summary
        typer.echo(
            f"{r.checkpoint}: {p.estimator}, {p.evaluations} evaluations "
            f"({s['evaluations_computed']} computed now, {s['evaluations_from_log']} from the "
            f"log) in {s['wall_time_s']:.1f} s; "
            f"v(N) - v(empty) = {p.v_full - p.v_empty:.4g} ({config.metric.value}); "
            f"{s['n_examples']} examples; -> {r.out}"
        )
        docs = s.get("document_groups")
        if docs:
            typer.echo(
                f"  documents in {docs['groups']} groups: {docs['group_evaluations']} group "
                f"evaluations = {docs['split_evaluations']:g} whole-split evaluations; "
                f"pairs per group {min(docs['pairs'])}-{max(docs['pairs'])}; logs {docs['logs']}"
            )
        if s.get("other"):
            typer.echo(
                f"  player 'other' ({len(s['other'])} module(s) with no parsed "
                f"{'layer' if s['grouping'] != 'kind' else 'kind'}): {', '.join(s['other'])}"
            )
    if several:
        first = (
            checkpoints[0] if checkpoints[0].name not in ("", "..") else checkpoints[0].resolve()
        )
        beside = first.parent / "shapley_compare"  # like merge's merged/
        combined = write_comparison(out if out is not None else beside, runs)
        if interactions:
            combined["interactions"] = write_interaction_comparison(
                out if out is not None else beside,
                [(_run_label(r), r.interactions, r.players.names) for r in runs
                 if r.interactions is not None],
            )  # fmt: skip
        typer.echo(f"combined: {', '.join(str(f) for f in combined.values())}")


def _groups_option(value: str) -> int | None:
    """``--document-groups``: ``auto`` -> None, else a positive integer."""
    from coto_tools.errors import OptionError

    if value.strip().lower() == "auto":
        return None
    try:
        groups = int(value)
    except ValueError:
        raise OptionError(
            f"--document-groups must be auto or an integer >= 1, got {value!r}"
        ) from None
    return groups


def _run_label(r: ShapleyRunResult) -> str:
    return f"{r.checkpoint.resolve().name} ({r.primary.estimator})"
