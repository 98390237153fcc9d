"""Linear mode connectivity: metrics along the segment between two adapters, from the base model
through one adapter, and over the plane through three (Frankle et al. 2020, arXiv 1912.05671;
Entezari et al. 2022, arXiv 2110.06296; plane as in Garipov et al. 2018, arXiv 1802.10026).

Path ``A -> B``: the point ``a`` has weights ``(1 - a, a)``; in delta space
``ΔW(a) = (1 - a)·ΔW_A + a·ΔW_B`` (two gated branches), in factor space the factors are
interpolated (:mod:`coto_tools.lmc.space`). ``a = 0`` is A's own evaluation exactly, ``a = 1``
B's. ``from_zero``: weights ``(t,)`` on one adapter, ``t`` from 0 (the base model) through 1
(the adapter) to ``max_scale``. Plane: weights ``(1 - u - v, u, v)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.errors import OptionError
from coto_tools.lmc.barrier import Curve
from coto_tools.lmc.engine import PointEvaluator
from coto_tools.lmc.grid import from_zero_positions, path_positions, plane_positions
from coto_tools.lmc.result import LmcResult, PathKind, PlaneResult
from coto_tools.lmc.space import Space, SpaceChoice, check_compatible, delta_gram, one_sided
from coto_tools.runtime.device import DeviceLike
from coto_tools.tasks.base import Task

BASE_NAME = "base"


def _spaces(space: Space | SpaceChoice | str) -> tuple[Space, ...]:
    try:
        return SpaceChoice(
            space.value if isinstance(space, Space | SpaceChoice) else space
        ).spaces()
    except ValueError:
        allowed = ", ".join(s.value for s in SpaceChoice)
        raise OptionError(f"space {space!r}: allowed {allowed}") from None


@contextlib.contextmanager
def _bar(progress: bool | Any, total: int, desc: str) -> Iterator[Any]:
    """A tqdm bar on stderr; ``progress`` may be a bar to advance instead (shared across calls)."""
    if progress is True or progress is False:
        with tqdm(total=total, desc=desc, disable=not progress, unit="pt", leave=False) as bar:
            yield bar
    else:
        yield progress


def _names(names: Sequence[str] | None, n: int) -> tuple[str, ...]:
    default = ("A", "B", "C")[:n]
    out = tuple(names) if names is not None else default
    if len(out) != n:
        raise OptionError(f"{n} names needed, got {len(out)}: {list(out)}")
    if len(set(out)) != n:
        raise OptionError(f"names must differ, got {list(out)}")
    return out


def trace_path(
    ev: PointEvaluator,
    start: str | None,
    end: str,
    positions: Sequence[float],
    spaces: Sequence[Space],
    *,
    bar: Any = None,
) -> dict[Space, Curve]:
    """Curves along ``start -> end`` (evaluator branch names; ``None`` = the zero adapter)."""
    curves: dict[Space, Curve] = {}
    for space in spaces:
        metrics = []
        for a in positions:
            w = {end: a} if start is None else {start: 1.0 - a, end: a}
            metrics.append(ev.value(space, w))
            if bar is not None:
                bar.update(1)
        curves[space] = Curve(tuple(positions), tuple(metrics))
    return curves


def _one_sided_names(adapters: Sequence[LoraAdapter], names: Sequence[str]) -> dict[str, str]:
    return {m: ", ".join(names[k] for k in holders) for m, holders in one_sided(adapters).items()}


def lmc_path(
    task: Task,
    adapter_a: LoraAdapter,
    adapter_b: LoraAdapter,
    *,
    points: int = 21,
    space: Space | SpaceChoice | str = SpaceChoice.both,
    split: str = "eval",
    names: Sequence[str] | None = None,
    label: str | None = None,
    progress: bool | Any = False,
    evaluator: PointEvaluator | None = None,
    device: DeviceLike | None = None,
) -> LmcResult:
    """Metrics along ``A -> B`` at ``points`` evenly spaced ``a`` in ``[0, 1]`` (plus 0.5).

    ``evaluator`` (optional) must hold both adapters under ``names``; by default one is built
    on ``device`` (``None``: where the task's model is built, the CPU).
    Modules held by only one adapter count as zero on the other side (listed in the result).
    """
    spaces = _spaces(space)
    n_a, n_b = _names(names, 2)
    positions = path_positions(points)
    for s in spaces:
        check_compatible([adapter_a, adapter_b], s)
    own = evaluator is None
    ev = evaluator or PointEvaluator(
        task, {n_a: adapter_a, n_b: adapter_b}, split=split, device=device
    )
    try:
        with _bar(progress, len(positions) * len(spaces), f"lmc {n_a}->{n_b}") as bar:
            curves = trace_path(ev, n_a, n_b, positions, spaces, bar=bar)
    finally:
        if own:
            ev.close()
    return LmcResult(
        label=label or f"{n_a} -> {n_b}",
        names=(n_a, n_b),
        kind=PathKind.pair,
        curves=curves,
        one_sided=_one_sided_names([adapter_a, adapter_b], (n_a, n_b)),
    )


def lmc_from_zero(
    task: Task,
    adapter: LoraAdapter,
    *,
    points: int = 21,
    max_scale: float = 1.5,
    space: Space | SpaceChoice | str = SpaceChoice.delta,
    split: str = "eval",
    name: str = "A",
    label: str | None = None,
    progress: bool | Any = False,
    evaluator: PointEvaluator | None = None,
    device: DeviceLike | None = None,
) -> LmcResult:
    """Metrics along ``t·adapter`` for ``t`` from 0 (base model) through 1 to ``max_scale``.

    Delta space scales ``ΔW`` by ``t``; factor space scales both factors by ``t`` (so ``ΔW`` by
    ``t²``), the factor path from an all-zero adapter. Barriers are over ``0 <= t <= 1``.
    ``evaluator``/``device``: as in :func:`lmc_path`.
    """
    spaces = _spaces(space)
    if name == BASE_NAME:
        raise OptionError(f"name {BASE_NAME!r} is reserved for the base model")
    positions = from_zero_positions(points, max_scale)
    own = evaluator is None
    ev = evaluator or PointEvaluator(task, {name: adapter}, split=split, device=device)
    try:
        with _bar(progress, len(positions) * len(spaces), f"lmc 0->{name}") as bar:
            curves = trace_path(ev, None, name, positions, spaces, bar=bar)
    finally:
        if own:
            ev.close()
    return LmcResult(
        label=label or f"{BASE_NAME} -> {name}",
        names=(BASE_NAME, name),
        kind=PathKind.from_zero,
        curves=curves,
    )


def lmc_plane(
    task: Task,
    adapters: Sequence[LoraAdapter],
    *,
    grid: int = 11,
    margin: float = 0.2,
    split: str = "eval",
    names: Sequence[str] | None = None,
    progress: bool | Any = False,
    evaluator: PointEvaluator | None = None,
    device: DeviceLike | None = None,
    dtype: str | None = None,
) -> PlaneResult:
    """Metrics over the delta-space plane ``ΔW_A + u·(ΔW_B - ΔW_A) + v·(ΔW_C - ΔW_A)``.

    Realised with three gated branches at gates ``(1 - u - v, u, v)``; the grid
    (:func:`~coto_tools.lmc.grid.plane_positions`) covers the triangle plus ``margin`` beyond
    each side. The corners are the three adapters' own evaluations. ``evaluator``/``device``:
    as in :func:`lmc_path`; ``dtype``: ``--dtype`` of the base model.
    """
    if len(adapters) != 3:
        raise OptionError(f"a plane needs exactly 3 adapters, got {len(adapters)}")
    nm = _names(names, 3)
    check_compatible(adapters, Space.delta)
    weights = plane_positions(grid, margin)
    own = evaluator is None
    ev = evaluator or PointEvaluator(
        task, dict(zip(nm, adapters, strict=True)), split=split, device=device, dtype=dtype
    )
    metrics = []
    try:
        with _bar(progress, len(weights), "lmc plane") as bar:
            for w in weights:
                metrics.append(ev.value(Space.delta, dict(zip(nm, w, strict=True))))
                bar.update(1)
    finally:
        if own:
            ev.close()
    return PlaneResult(
        names=(nm[0], nm[1], nm[2]),
        weights=weights,
        metrics=tuple(metrics),
        grid=grid,
        margin=margin,
        gram=delta_gram(adapters),
        one_sided={m: tuple(nm[k] for k in h) for m, h in one_sided(adapters).items()},
    )
