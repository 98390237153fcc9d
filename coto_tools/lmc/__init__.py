"""Linear mode connectivity between LoRA adapters (Frankle et al. 2020, arXiv 1912.05671;
Entezari et al. 2022, arXiv 2110.06296): paths in delta or factor space, barriers, planes.

``lmc_path(task, A, B, points=21, space="both") -> LmcResult``; ``barriers(curve)``;
``lmc_from_zero(task, A, max_scale=1.5)``; ``lmc_plane(task, [A, B, C], grid=11)``.
"""

from __future__ import annotations

from coto_tools.lmc.barrier import HIGHER_IS_BETTER, Barrier, Curve, barrier, barriers
from coto_tools.lmc.engine import PointEvaluator
from coto_tools.lmc.grid import from_zero_positions, path_positions, plane_positions
from coto_tools.lmc.paths import lmc_from_zero, lmc_path, lmc_plane
from coto_tools.lmc.result import LmcResult, PathKind, PlaneResult
from coto_tools.lmc.space import Space, SpaceChoice, interpolate_factors

__all__ = [
    "HIGHER_IS_BETTER",
    "Barrier",
    "Curve",
    "LmcResult",
    "PathKind",
    "PlaneResult",
    "PointEvaluator",
    "Space",
    "SpaceChoice",
    "barrier",
    "barriers",
    "from_zero_positions",
    "interpolate_factors",
    "lmc_from_zero",
    "lmc_path",
    "lmc_plane",
    "path_positions",
    "plane_positions",
]
