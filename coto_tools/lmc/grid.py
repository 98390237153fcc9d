"""Where a path or plane is evaluated: positions chosen so the endpoints are hit exactly."""

from __future__ import annotations

import math

from coto_tools.errors import OptionError


def path_positions(points: int) -> tuple[float, ...]:
    """``points`` evenly spaced positions in ``[0, 1]`` (``i / (points - 1)``), plus ``0.5`` when
    ``points`` is even (the midpoint is always reported). ``0`` and ``1`` are exact."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise OptionError(f"--points must be an integer >= 2, got {points!r}")
    pos = {i / (points - 1) for i in range(points)}
    pos.add(0.5)
    return tuple(sorted(pos))


def from_zero_positions(points: int, max_scale: float) -> tuple[float, ...]:
    """Scales from 0 (the base model) through 1 (the adapter) to ``max_scale``.

    The step is ``1 / (points - 1)`` as on a path; past 1 the same step continues up to
    ``max_scale``, which is added as the last point if the step does not land on it.
    """
    base = path_positions(points)
    if not math.isfinite(max_scale) or max_scale < 1.0:
        raise OptionError(f"--max-scale must be a finite number >= 1, got {max_scale}")
    step = 1.0 / (points - 1)
    extra: list[float] = []
    i = points
    while i * step < max_scale - 1e-12:
        extra.append(i / (points - 1))
        i += 1
    if max_scale > 1.0:
        extra.append(float(max_scale))
    return tuple(sorted(set(base) | set(extra)))


def plane_positions(grid: int, margin: float) -> tuple[tuple[float, float, float], ...]:
    """Barycentric weights ``(1 - u - v, u, v)`` of a triangular grid over a plane.

    The plane is ``A + u·(B - A) + v·(C - A)``.

    The grid step is ``1 / (grid - 1)``; ``margin`` (a fraction of the edge, rounded to whole
    steps) extends it past the triangle on all three sides: every barycentric weight
    ``1 - u - v``, ``u``, ``v`` is ``>= -margin``. The corners ``(0, 0)``, ``(1, 0)``, ``(0, 1)``
    are exact grid points; every weight is computed as ``integer / (grid - 1)``, so the edges'
    weights are exact too (``1 - u - v`` is exactly 0 on the edge opposite corner 0).
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise OptionError(f"--grid must be an integer >= 2, got {grid!r}")
    if not math.isfinite(margin) or not 0.0 <= margin <= 1.0:
        raise OptionError(f"--margin must be in [0, 1], got {margin}")
    n = grid - 1
    m = int(round(margin * n))
    out: list[tuple[float, float, float]] = []
    for i in range(-m, n + 2 * m + 1):
        for j in range(-m, n + 2 * m + 1):
            if i + j <= n + m:
                out.append(((n - i - j) / n, i / n, j / n))
    return tuple(out)
