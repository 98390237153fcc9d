"""An LMC run over checkpoints: load them, check their tasks agree, evaluate every path on one
model, and write ``lmc.csv``, ``lmc.json``, ``lmc.png`` (or ``lmc_plane.csv``/``.png``)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from coto_tools.adapters.atomic import atomic_path, atomic_write_text
from coto_tools.adapters.io import load_adapter
from coto_tools.adapters.lora import LoraAdapter
from coto_tools.adapters.outguard import check_output, task_files
from coto_tools.errors import CheckpointError, OptionError, OutputExistsError, TaskError
from coto_tools.lmc.engine import PointEvaluator
from coto_tools.lmc.grid import from_zero_positions, path_positions, plane_positions
from coto_tools.lmc.paths import BASE_NAME, lmc_from_zero, lmc_path, lmc_plane
from coto_tools.lmc.result import CSV_METRICS, LmcResult, PlaneResult
from coto_tools.lmc.space import Space, SpaceChoice, check_compatible
from coto_tools.runtime.executor import ExecutorConfig, local_device, local_dtype
from coto_tools.tasks.base import Task

LMC_FORMAT = "coto-tools/lmc"
RUN_FILE = "coto.json"
SCALING_NOTE = (
    "factor space: A(a) = (1-a) A_A + a A_B and s·B(a) = (1-a) s_A B_A + a s_B B_B (each "
    "scaling folded into its B); with equal scalings this is the raw factor interpolation at "
    "that scaling"
)
MISSING_NOTE = "a module held by only one adapter counts as zero in the other (ΔW = 0, A = B = 0)"


class Mode(str, Enum):
    """``pairs``: A -> B per pair; ``from_zero``: base -> each adapter; ``plane``: 3 adapters."""

    pairs = "pairs"
    from_zero = "from_zero"
    plane = "plane"


_GROUP_SIZE = {Mode.pairs: 2, Mode.from_zero: 1, Mode.plane: 3}


@dataclass(frozen=True)
class LmcConfig:
    """One ``coto-tools lmc`` invocation. ``groups``: a pair per curve (``pairs``), one checkpoint
    per curve (``from_zero``), or one triple (``plane``). ``labels``: one per group (``plane``:
    one per corner); empty for the defaults (``coto.json``'s method and seed)."""

    groups: tuple[tuple[Path, ...], ...]
    mode: Mode = Mode.pairs
    labels: tuple[str, ...] = ()
    points: int = 21
    space: SpaceChoice | None = None  # None: both (plane: delta)
    task: str | None = None
    split: str = "eval"
    max_scale: float = 1.5
    grid: int = 11
    margin: float = 0.2
    out: Path | None = None
    force: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        default = SpaceChoice.delta if Mode(self.mode) is Mode.plane else SpaceChoice.both
        object.__setattr__(self, "space", SpaceChoice(self.space or default))
        object.__setattr__(self, "groups", tuple(tuple(Path(p) for p in g) for g in self.groups))
        if not self.groups:
            raise OptionError("no checkpoints given: lmc A B, or --pair A B (repeatable)")
        size = _GROUP_SIZE[self.mode]
        for g in self.groups:
            if len(g) != size:
                what = {
                    2: "a pair of checkpoints",
                    1: "one checkpoint",
                    3: "exactly 3 checkpoints",
                }[size]
                raise OptionError(
                    f"{self.mode.value}: each curve needs {what}, got {len(g)}: "
                    f"{[str(p) for p in g]}"
                )
        if self.mode is Mode.pairs:
            same = [str(g[0]) for g in self.groups if g[0] == g[1]]
            if same:
                raise OptionError(f"a pair needs two different checkpoints, got {same[0]} twice")
        if self.mode is Mode.plane and len(self.groups) != 1:
            raise OptionError("--plane takes exactly one set of 3 checkpoints")
        want = 3 if self.mode is Mode.plane else len(self.groups)
        if self.labels and len(self.labels) != want:
            raise OptionError(
                f"--label given {len(self.labels)} time(s); {want} needed (one per curve)"
            )
        if self.split not in ("eval", "quick"):
            raise OptionError(f"--split {self.split!r}: allowed eval, quick")
        # validated now so that bad options fail before anything is loaded or written
        path_positions(self.points)
        if self.mode is Mode.from_zero:
            from_zero_positions(self.points, self.max_scale)
        if self.mode is Mode.plane:
            plane_positions(self.grid, self.margin)
            if self.space is not SpaceChoice.delta:
                raise OptionError(f"--plane is delta space only, got --space {self.space}")

    @property
    def spaces(self) -> tuple[Space, ...]:
        return SpaceChoice(self.space).spaces()

    @property
    def checkpoints(self) -> list[Path]:
        """Distinct checkpoints in first-seen order."""
        seen: dict[Path, None] = {}
        for g in self.groups:
            for p in g:
                seen.setdefault(p, None)
        return list(seen)

    def out_dir(self) -> Path:
        if self.out is not None:
            return self.out
        first = self.groups[0][0]
        return (first if first.is_dir() else first.parent) / "lmc"

    def output_files(self) -> list[str]:
        if self.mode is Mode.plane:
            return ["lmc_plane.csv", "lmc.json", "lmc_plane.png"]
        return ["lmc.csv", "lmc.json", "lmc.png"]


@dataclass(frozen=True)
class Loaded:
    """A checkpoint with its record (``None`` without ``coto.json``) and its display name."""

    path: Path
    adapter: LoraAdapter
    record: dict[str, Any] | None
    name: str


@dataclass(frozen=True)
class LmcRun:
    config: LmcConfig
    task_name: str
    checkpoints: dict[str, str]
    results: tuple[LmcResult, ...] = ()
    plane: PlaneResult | None = None
    evaluations: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)


def _read_record(path: Path) -> dict[str, Any] | None:
    from coto_tools.train.run import read_record

    run_dir = path if path.is_dir() else path.parent
    return read_record(run_dir) if (run_dir / RUN_FILE).is_file() else None


def _default_name(path: Path, rec: dict[str, Any] | None) -> str:
    if rec is not None and "method" in rec:
        seed = rec.get("seed")
        return f"{rec['method']} s{seed}" if seed is not None else str(rec["method"])
    return path.name if path.is_dir() else path.stem


def load_checkpoints(config: LmcConfig) -> list[Loaded]:
    """Load every distinct checkpoint (all missing paths reported at once)."""
    missing = [str(p) for p in config.checkpoints if not p.exists()]
    if missing:
        raise CheckpointError(f"no such checkpoint(s): {', '.join(missing)}")
    out: list[Loaded] = []
    used: set[str] = {BASE_NAME}
    for p in config.checkpoints:
        rec = _read_record(p)
        name = _default_name(p, rec)
        k = 2
        base = name
        while name in used:
            name, k = f"{base} #{k}", k + 1
        used.add(name)
        out.append(Loaded(p, load_adapter(p), rec, name))
    return out


def resolve_task(
    config: LmcConfig, loaded: Sequence[Loaded], get_task: Callable[..., Task] | None = None
) -> Task:
    """The task: ``--task``, else the one every ``coto.json`` names (they must agree);
    ``get_task``: how a task is made (default :func:`coto_tools.tasks.get_task`)."""
    from coto_tools.tasks import get_task as default_get_task

    make = default_get_task if get_task is None else get_task
    if config.task is not None:
        return make(config.task)
    no_rec = [str(c.path) for c in loaded if c.record is None]
    if no_rec:
        raise TaskError(f"no {RUN_FILE} in {', '.join(no_rec)}: pass --task to name the task")
    recs = {str(c.path): c.record for c in loaded if c.record is not None}
    keys = {p: (r["task"], json.dumps(r["task_variant"], sort_keys=True)) for p, r in recs.items()}
    if len(set(keys.values())) > 1:
        desc = "; ".join(f"{p}: {t}{'' if v == '{}' else ' ' + v}" for p, (t, v) in keys.items())
        raise TaskError(
            f"the checkpoints' tasks differ ({desc}); pass --task to evaluate on one task"
        )
    rec = recs[str(loaded[0].path)]
    return make(rec["task"], **rec["task_variant"])


def _labels(config: LmcConfig, by_path: dict[Path, Loaded]) -> list[str]:
    if config.labels:
        return list(config.labels)
    if config.mode is Mode.plane:  # corner names must differ even if a checkpoint repeats
        names = [by_path[p].name for p in config.groups[0]]
        return [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]
    labels = []
    for g in config.groups:
        names = [by_path[p].name for p in g]
        if len(names) == 1:
            labels.append(names[0])
            continue
        m0, _, s0 = names[0].partition(" ")
        m1, _, s1 = names[1].partition(" ")
        labels.append(f"{m0} {s0}-{s1}" if m0 == m1 and s0 and s1 else f"{names[0]} / {names[1]}")
    return labels


def check_outputs(config: LmcConfig) -> None:
    out = config.out_dir()
    inputs = [p for g in config.groups for p in g] + task_files(config.task)
    check_output(out, inputs, replaces=False, inside_ok=True)
    existing = [f for f in config.output_files() if (out / f).exists()]
    if existing and not config.force:
        raise OutputExistsError(f"{out}: {', '.join(existing)} exist(s); pass --force to overwrite")


def run_lmc(
    config: LmcConfig,
    *,
    progress: bool = False,
    executor: ExecutorConfig | None = None,
    get_task: Callable[..., Task] | None = None,
) -> LmcRun:
    """Load, validate (tasks, shapes, ranks, outputs), then evaluate every curve on one model.

    ``executor``: local (or ``None``): points are evaluated here, on ``executor.device`` (``None``:
    the CPU); Ray: on the cluster, every point listed first (a dry run), evaluated in one
    parallel batch, then traced from the caches.
    ``get_task``: how the task is made (default :func:`coto_tools.tasks.get_task`; a caller
    holding built tasks passes its own so their tokenised splits are reused)."""
    remote = executor is not None and not executor.is_local
    check_outputs(config)
    loaded = load_checkpoints(config)
    by_path = {c.path: c for c in loaded}
    for g in config.groups:  # shapes (and ranks for factor space) before any model is built
        for space in config.spaces:
            check_compatible([by_path[p].adapter for p in g], space)
    task = resolve_task(config, loaded, get_task)
    labels = _labels(config, by_path)
    if config.mode is Mode.plane:
        trio = [by_path[p] for p in config.groups[0]]
        ads = [c.adapter for c in trio]
        kw: dict[str, Any] = dict(grid=config.grid, margin=config.margin, split=config.split)
        plane_ev = None
        if remote:
            from coto_tools.lmc.ray_points import PointRecorder

            rec = PointRecorder()
            lmc_plane(task, ads, names=labels, evaluator=rec, **kw)  # type: ignore[arg-type]
            plane_ev = _remote_points(
                config, loaded, task, dict(zip(labels, ads, strict=True)), executor
            )
            plane_ev.prefetch(rec.points)
        try:
            plane = lmc_plane(
                task,
                ads,
                names=labels,
                progress=progress,
                evaluator=plane_ev,
                device=local_device(executor),  # None on Ray: plane_ev is given
                dtype=local_dtype(executor),
                **kw,
            )
        finally:
            if plane_ev is not None:
                plane_ev.close()
        return _finish(config, task, loaded, (), plane, len(plane.metrics))
    adapters = {c.name: c.adapter for c in loaded}
    if remote:
        from coto_tools.lmc.ray_points import PointRecorder

        rec = PointRecorder()
        _trace_groups(config, by_path, labels, task, rec, None)  # type: ignore[arg-type]
        ev = _remote_points(config, loaded, task, adapters, executor)
        ev.prefetch(rec.points)
    else:
        ev = PointEvaluator(
            task, adapters, split=config.split,
            device=local_device(executor), dtype=local_dtype(executor),
        )  # fmt: skip
    results: list[LmcResult]
    spaces = config.spaces
    if config.mode is Mode.from_zero:
        per = len(from_zero_positions(config.points, config.max_scale))
    else:
        per = len(path_positions(config.points))
    total = per * len(spaces) * len(config.groups)
    try:
        with tqdm(total=total, desc="lmc", unit="pt", disable=not progress) as bar:
            results = _trace_groups(config, by_path, labels, task, ev, bar)
    finally:
        ev.close()
    return _finish(config, task, loaded, tuple(results), None, ev.evaluations)


def _trace_groups(
    config: LmcConfig,
    by_path: dict[Path, Loaded],
    labels: Sequence[str],
    task: Task,
    ev: PointEvaluator,
    bar: Any,
) -> list[LmcResult]:
    results: list[LmcResult] = []
    for g, label in zip(config.groups, labels, strict=True):
        cs = [by_path[p] for p in g]
        if config.mode is Mode.from_zero:
            res = lmc_from_zero(
                task,
                cs[0].adapter,
                points=config.points,
                max_scale=config.max_scale,
                space=SpaceChoice(config.space),
                name=cs[0].name,
                label=label,
                progress=bar if bar is not None else False,
                evaluator=ev,
            )
        else:
            res = lmc_path(
                task,
                cs[0].adapter,
                cs[1].adapter,
                points=config.points,
                space=SpaceChoice(config.space),
                names=(cs[0].name, cs[1].name),
                label=label,
                progress=bar if bar is not None else False,
                evaluator=ev,
            )
        results.append(res)
    return results


def _remote_points(
    config: LmcConfig,
    loaded: Sequence[Loaded],
    task: Task,
    adapters: dict[str, LoraAdapter],
    executor: Any,
) -> Any:
    """A :class:`~coto_tools.lmc.ray_points.RayPointEvaluator` of ``adapters`` (by value)
    on the task :func:`resolve_task` chose (as a spec string the workers rebuild)."""
    from coto_tools.lmc.ray_points import RayPointEvaluator
    from coto_tools.runtime.executor import EvaluatorSpec
    from coto_tools.tasks import task_spec

    if config.task is not None:
        name = config.task
    else:
        rec = loaded[0].record or {}
        name = task_spec(str(rec["task"]), dict(rec.get("task_variant") or {}))
    spec = EvaluatorSpec(name, tuple(adapters.items()), split=config.split)
    return RayPointEvaluator(task, adapters, spec=spec, executor=executor)


def _finish(
    config: LmcConfig,
    task: Task,
    loaded: Sequence[Loaded],
    results: tuple[LmcResult, ...],
    plane: PlaneResult | None,
    evaluations: int,
) -> LmcRun:
    return LmcRun(
        config=config,
        task_name=getattr(task, "name", type(task).__name__),
        checkpoints={c.name: str(c.path) for c in loaded},
        results=results,
        plane=plane,
        evaluations=evaluations,
        notes=(SCALING_NOTE, MISSING_NOTE),
    )


# -- writing ----------------------------------------------------------------------------------
def _csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in r.items()})
    return buf.getvalue()


def summary(run: LmcRun) -> dict[str, Any]:
    c = run.config
    out: dict[str, Any] = {
        "format": LMC_FORMAT,
        "version": 1,
        "mode": c.mode.value,
        "task": run.task_name,
        "split": c.split,
        "spaces": [s.value for s in c.spaces],
        "points": c.points,
        "checkpoints": run.checkpoints,
        "evaluations": run.evaluations,
        "notes": list(run.notes),
    }
    if c.mode is Mode.from_zero:
        out["max_scale"] = c.max_scale
    if run.plane is not None:
        out["plane"] = run.plane.summary()
    else:
        out["pairs"] = [r.summary() for r in run.results]
    return out


def write_outputs(run: LmcRun, *, figure: bool = True) -> list[Path]:
    """Write the run's files into its output directory, each atomically (the figure,
    ``lmc.png`` or ``lmc_plane.png``, only with ``figure``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from coto_tools.lmc.plot import plot_paths, plot_plane

    c = run.config
    out = c.out_dir()
    force = c.force
    written = []
    if run.plane is not None:
        fields = ["u", "v", "w0", "w1", "w2", *CSV_METRICS]
        written.append(
            atomic_write_text(out / "lmc_plane.csv", _csv(run.plane.rows(), fields), force=force)
        )
        draw: Callable[[], Any] = partial(plot_plane, run.plane)  # drawn only if written
        png = out / "lmc_plane.png"
    else:
        rows = [row for i, r in enumerate(run.results) for row in r.rows(i)]
        fields = ["pair", "label", "kind", "space", "a", *CSV_METRICS]
        written.append(atomic_write_text(out / "lmc.csv", _csv(rows, fields), force=force))
        draw = partial(plot_paths, run.results)
        png = out / "lmc.png"
    text = json.dumps(summary(run), indent=2, allow_nan=False) + "\n"
    written.append(atomic_write_text(out / "lmc.json", text, force=force))
    if not figure:
        return written
    fig = draw()
    try:
        with atomic_path(png, force=force) as tmp:
            fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    written.append(png)
    return written


__all__ = [
    "LmcConfig",
    "LmcRun",
    "Mode",
    "Space",
    "check_outputs",
    "load_checkpoints",
    "run_lmc",
    "summary",
    "write_outputs",
]
