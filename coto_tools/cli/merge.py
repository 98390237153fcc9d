"""``coto-tools merge A B [C ...]``: merge LoRA adapters without loading a base model."""

from __future__ import annotations

from pathlib import Path

import typer

from coto_tools.cli._app import THREADS, app, apply_threads
from coto_tools.cli.shapley import DTYPE
from coto_tools.errors import OptionError
from coto_tools.merge import (
    KnotsMerge,
    MajoritySign,
    MergeConfig,
    MergeMethod,
    MergeSpace,
    TiesVote,
    merge_files,
)
from coto_tools.merge.engine import MergeResult
from coto_tools.runtime.dtype import check_dtype
from coto_tools.tasks import options as user_opts


def _parse_weights(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise OptionError(
            f"--weights must be comma-separated numbers like 0.5,0.5 or -1,1, got {text!r}"
        ) from None


@app.command("merge")
def merge_cmd(
    inputs: list[Path] = typer.Argument(
        ..., help="Adapters: PEFT directories, adapter_model.safetensors, or bare .safetensors."
    ),
    method: MergeMethod = typer.Option(
        MergeMethod.CAT,
        "--method",
        help="linear, task-arithmetic (arXiv 2212.04089), ties (arXiv 2306.01708), dare-linear / "
        "dare-ties (arXiv 2311.03099), magnitude-prune, cat (exact, ranks add up), svd, or knots "
        "(KnOTS, arXiv 2410.19735: SVD of [ΔW_1 ... ΔW_n] = U S [V_1ᵀ ... V_nᵀ], the S V_iᵀ blocks "
        "merged with --knots-merge, ΔW = U · merged). Default cat: with the default weights, the "
        "exact average of the adapters' deltas.",
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="One weight per input, comma-separated (negative allowed, no need to sum to 1). "
        "Default 1/n each for linear, dare-linear, magnitude-prune, cat, svd; 1 each otherwise.",
    ),
    density: float | None = typer.Option(
        None,
        "--density",
        help="Fraction of entries kept, in (0, 1] (ties, dare-*, magnitude-prune, knots). "
        "Default 0.5.",
    ),
    majority_sign: MajoritySign = typer.Option(
        MajoritySign.TOTAL,
        "--majority-sign",
        help="TIES sign election: total (sum) or frequency (count).",
    ),
    space: MergeSpace | None = typer.Option(
        None,
        "--space",
        help="factor: A and B merged separately, as PEFT's add_weighted_adapter (default for "
        "linear, ties, dare-*, magnitude-prune; needs equal ranks). delta: on s·B@A, "
        "re-factored by SVD (default and only space of cat, svd, knots; default of "
        "task-arithmetic).",
    ),
    rank: int | None = typer.Option(
        None, "--rank", help="Output rank in delta space (default: the sum of the input ranks)."
    ),
    ties_vote: TiesVote = typer.Option(
        TiesVote.UNWEIGHTED,
        "--ties-vote",
        help="Delta-space ties / dare-ties: unweighted (default, as PEFT's ties_svd: the sign "
        "vote sees s·B@A of each input and the weights enter only the disjoint merge) or "
        "weighted (weights folded into the deltas before the vote, so they sway it; with "
        "unequal weights the results differ). Factor space always votes unweighted, as PEFT.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of DARE's random masks."),
    knots_merge: KnotsMerge = typer.Option(
        KnotsMerge.TIES,
        "--knots-merge",
        help="How knots merges the aligned blocks: ties or task-arithmetic.",
    ),
    alpha: float | None = typer.Option(
        None, "--alpha", help="LoRA alpha for bare inputs without metadata."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace --out if it exists and coto-tools wrote it (anything else is refused).",
    ),
    allow_different_bases: bool = typer.Option(
        False,
        "--allow-different-bases",
        help="Merge inputs made for different base models (base_model_name_or_path) or with "
        "no module in common (refused by default).",
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Read .bin inputs (torch.load weights_only=True)."
    ),
    threads: int = THREADS,
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Output: a path ending in .safetensors gives a bare file, anything else a PEFT "
        "directory. Default merged/ beside the first input (merged-2/, ... if taken).",
    ),
    # -- evaluation of the result (issue 7) --
    evaluate: bool = typer.Option(
        False,
        "--eval",
        help="Evaluate the base model, each input and the merged adapter on --task or on the "
        "user task (--data ...), through the gated runtime.",
    ),
    task: str | None = typer.Option(None, "--task", help="--eval: a built-in task name."),
    split: str = typer.Option("eval", "--split", help="--eval: eval or quick."),
    base_model: str | None = user_opts.BASE_MODEL,
    data: Path | None = user_opts.DATA,
    label_prompts: str | None = user_opts.LABEL_PROMPTS,
    max_length: int = user_opts.MAX_LENGTH,
    batch_size: int = user_opts.BATCH_SIZE,
    limit: int | None = user_opts.LIMIT,
    task_plugin: str | None = user_opts.TASK_PLUGIN,
    dtype: str = DTYPE,
) -> None:
    """Merge LoRA adapters module by module, streaming from disk; no base model is loaded."""
    apply_threads(threads)
    config = MergeConfig(
        method=method,
        weights=_parse_weights(weights),
        density=density,
        majority_sign=majority_sign,
        space=space,
        rank=rank,
        seed=seed,
        knots_merge=knots_merge,
        ties_vote=ties_vote,
    )
    user = user_opts.UserTaskArgs(
        base_model, data, label_prompts, max_length, batch_size, limit, task_plugin
    )
    if (user.given() or task is not None) and not evaluate:
        raise OptionError("--task/--data/--base-model/--task-plugin are for --eval; add --eval")
    if evaluate and not user.given() and task is None:
        raise OptionError("--eval needs a task: --task NAME, or --data FILE [--base-model DIR]")
    check_dtype(dtype)  # a bad --dtype fails before anything is written
    if evaluate:  # the task and its data (a plugin's code too) fail here, before any write
        from coto_tools.tasks import get_task

        get_task(str(user_opts.user_task_spec(user, inputs, task=task))).batches(split)
    result = merge_files(
        inputs,
        config,
        out,
        force=force,
        alpha=alpha,
        allow_pickle=allow_pickle,
        progress=True,
        allow_different_bases=allow_different_bases,
    )
    for line in result.report.summary():
        typer.echo(line)
    if evaluate:
        _evaluate(result, inputs, user, task, split, alpha, allow_pickle, dtype)


def _evaluate(
    result: MergeResult,
    inputs: list[Path],
    user: user_opts.UserTaskArgs,
    task: str | None,
    split: str,
    alpha: float | None,
    allow_pickle: bool,
    dtype: str = "auto",
) -> None:
    """``--eval``: metrics of the base model, each input and the merged adapter."""
    from coto_tools.adapters import load_adapter
    from coto_tools.runtime.evaluate import evaluate_adapters
    from coto_tools.tasks import get_task
    from coto_tools.tasks.base import uses_metric_sums

    target = Path(str(result.report.output))
    spec = user_opts.user_task_spec(user, inputs, task=task, head=[target])
    built = get_task(str(spec))
    adapters = {f"input {i + 1} ({p})": load_adapter(p, alpha=alpha, allow_pickle=allow_pickle)
                for i, p in enumerate(inputs)}  # fmt: skip
    adapters["merged"] = result.adapter
    lm = uses_metric_sums(built)
    metrics = evaluate_adapters(built, adapters, split=split, dtype=dtype)
    for name, m in metrics.items():
        typer.echo(f"eval {name}: {user_opts.format_metrics(m, perplexity=lm)} (n={m.n})")
