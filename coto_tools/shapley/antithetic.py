"""Antithetic permutation sampling (Mitchell et al. 2022, arXiv 2104.12199; Lomeli et al. 2019).

Steps: (1) draw a permutation ``pi`` uniformly; (2) take its marginal contributions and those of
its reverse ``reversed(pi)`` (Castro et al.'s walk, see :mod:`.permutation`); (3) the mean of the
two vectors is one sample; average the samples. A player early in ``pi`` is late in its reverse,
so the two contributions are negatively correlated for games with diminishing (or increasing)
returns, which lowers the variance. Efficiency holds exactly, as for plain permutations.
"""

from __future__ import annotations

from coto_tools.shapley._sampling import ProgressArg, SamplingConfig
from coto_tools.shapley.cache import CachedGame
from coto_tools.shapley.permutation import estimate_permutation
from coto_tools.shapley.result import ShapleyResult


def estimate_antithetic(
    cached: CachedGame,
    cfg: SamplingConfig,
    *,
    progress: ProgressArg = False,
    player_names: tuple[str, ...] | None = None,
) -> ShapleyResult:
    """Antithetic permutation sampling; ``permutations=p`` draws ``ceil(p / 2)`` pairs."""
    return estimate_permutation(
        cached, cfg, progress=progress, player_names=player_names, antithetic=True
    )
