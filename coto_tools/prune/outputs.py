"""Writing a pruning run's files (each atomically) and writing a pruned adapter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from coto_tools.adapters.atomic import atomic_path, atomic_write_text
from coto_tools.adapters.io import load_adapter, save_adapter
from coto_tools.adapters.outguard import check_output, task_files
from coto_tools.adapters.players import read_players_map
from coto_tools.errors import OptionError, OutputExistsError
from coto_tools.prune.report import write_report
from coto_tools.prune.run import (
    OUTPUT_FILES,
    PruneConfig,
    PruneResult,
    check_shapley_players,
    read_shapley_csv,
)
from coto_tools.prune.strategies import Strategy, parse_strategy, select_strategy
from coto_tools.prune.tables import (
    AUC_FIELDS,
    CURVE_FIELDS,
    PRUNE_FIELDS,
    auc_rows,
    curve_rows,
    strategy_rows,
    to_csv,
)


def check_outputs(config: PruneConfig) -> Path:
    """The output folder, refused when it holds outputs of ours and ``force`` is not set."""
    out = config.out_dir()
    inputs = [*config.checkpoints, *config.shapley, *task_files(config.task)]
    inputs += [config.players_map] if config.players_map is not None else []
    check_output(out, inputs, replaces=False, inside_ok=True)
    existing = [f for f in OUTPUT_FILES if (out / f).exists()]
    if existing and not config.force:
        raise OutputExistsError(f"{out}: {', '.join(existing)} exist(s); pass --force to overwrite")
    return out


def _save_fig(fig: object, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]


def write_outputs(result: PruneResult, out: str | Path | None = None) -> list[Path]:
    """Write ``prune.csv``, ``prune_curves.csv``, ``prune_auc.csv``, the two figures and
    ``prune_report.md`` into ``out`` (default: the config's folder). Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    from coto_tools.prune.plot import plot_curves, plot_strategies

    folder = Path(out) if out is not None else result.config.out_dir()
    if out is None:
        check_outputs(result.config)
    folder.mkdir(parents=True, exist_ok=True)
    # what was not computed (--no-curves, --no-rank-sweep) is not written: no header-only CSV,
    # no empty figure; a stale copy from an earlier run in this folder is removed
    curves = curve_rows(result)
    swept = any(c.curves for c in result.checkpoints)
    has_curves = swept or any(c.rank is not None for c in result.checkpoints)
    files: list[tuple[str, str | None]] = [
        ("prune.csv", to_csv(strategy_rows(result), PRUNE_FIELDS)),
        ("prune_curves.csv", to_csv(curves, CURVE_FIELDS) if curves else None),
        ("prune_auc.csv", to_csv(auc_rows(result), AUC_FIELDS) if swept else None),
    ]
    figures: list[tuple[str, Callable[[PruneResult], Any]]] = [
        ("prune_strategies.png", plot_strategies)
    ]
    figures += [("prune_curves.png", plot_curves)] if has_curves else []
    paths = []
    for name, text in files:
        if text is None:
            (folder / name).unlink(missing_ok=True)
        else:
            paths.append(atomic_write_text(folder / name, text))
    if not has_curves:
        (folder / "prune_curves.png").unlink(missing_ok=True)
    for name, plot in figures:
        _save_fig(plot(result), folder / name)
        paths.append(folder / name)
    paths.append(atomic_write_text(folder / "prune_report.md", write_report(result)))
    return paths


def write_pruned(
    checkpoint: str | Path,
    strategy: Strategy | str,
    out: str | Path,
    *,
    shapley: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    players_map: str | Path | None = None,
) -> tuple[Path, list[str]]:
    """Save the modules of ``checkpoint`` that ``strategy`` keeps as a PEFT adapter at ``out``
    (atomic; an existing ``out`` is refused unless ``force``). Returns ``(out, kept)``.
    ``players_map``: the ``--players-map`` file the ``shapley`` values were computed with."""
    s = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    out = Path(out)
    check_output(out, [checkpoint, shapley, players_map], force=force, replaces=True)
    if s.kind.value.startswith("shapley") and shapley is None:
        raise OptionError(f"strategy {s.name} needs --shapley shapley.csv")
    if shapley is not None and not Path(shapley).is_file():
        raise OptionError(f"--shapley: no such file: {shapley}")
    pmap = None
    if players_map is not None:
        if shapley is None:
            raise OptionError("--players-map names the players of --shapley values; give --shapley")
        pmap = read_players_map(players_map)
    adapter = load_adapter(checkpoint)
    values = None
    if shapley is not None:
        values = read_shapley_csv(shapley)
        check_shapley_players(shapley, adapter.names, values, pmap)
    norms = {n: m.delta_norm() for n, m in adapter.modules.items()}
    kept = select_strategy(
        adapter.names, s, shapley=values, norms=norms, seed=seed, players_map=pmap
    )
    if not kept:
        raise OptionError(f"strategy {s.name} keeps no adapter of {checkpoint}; nothing to write")
    pruned = adapter.subset(kept)
    info = {
        "pruned": {
            "strategy": s.name,
            "seed": s.seed if s.seed is not None else seed,
            "source": str(checkpoint),
            "kept": kept,
            "removed": [n for n in adapter.names if n not in set(kept)],
        }
    }
    base = adapter.config.get("base_model_name_or_path")
    save_adapter(pruned, out, force=force, base_model=base, extra_config=info)
    return out, kept
