"""Merge choices (``str`` Enums) and the frozen, self-validating :class:`MergeConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

from coto_tools.errors import MergeError, enum_option

# merge options word a bad choice their own way (tests and users match it)
BAD_CHOICE = "{what} must be one of {allowed}, got {value!r}"


class MergeMethod(str, Enum):
    """How the adapters are combined (see each module's docstring for its reference)."""

    LINEAR = "linear"
    TASK_ARITHMETIC = "task-arithmetic"
    TIES = "ties"
    DARE_LINEAR = "dare-linear"
    DARE_TIES = "dare-ties"
    MAGNITUDE_PRUNE = "magnitude-prune"
    CAT = "cat"
    SVD = "svd"
    KNOTS = "knots"


class MergeSpace(str, Enum):
    """``factor``: A and B merged separately (PEFT's semantics); ``delta``: on ``s·B@A``."""

    FACTOR = "factor"
    DELTA = "delta"


class MajoritySign(str, Enum):
    """TIES sign election: sign of the sum of values (``total``) or of the count (``frequency``)."""

    TOTAL = "total"
    FREQUENCY = "frequency"


class TiesVote(str, Enum):
    """What the TIES sign election sees in delta space (factor space always votes unweighted).

    ``unweighted`` (default, PEFT's ``ties_svd``): the vote is on the trimmed ``s_i ΔW_i`` and
    the weights enter the disjoint merge (the mean of ``w_i τ̂_i`` over agreeing tasks);
    ``weighted``: the weights are folded into the task vectors ``w_i s_i ΔW_i`` first, so they
    sway the vote (and the merge is the mean of the agreeing weighted vectors).
    """

    UNWEIGHTED = "unweighted"
    WEIGHTED = "weighted"


class KnotsMerge(str, Enum):
    """The merge KnOTS applies to the aligned per-adapter blocks."""

    TIES = "ties"
    TASK_ARITHMETIC = "task-arithmetic"


#: methods whose density option is used
DENSITY_METHODS = frozenset(
    {
        MergeMethod.TIES,
        MergeMethod.DARE_LINEAR,
        MergeMethod.DARE_TIES,
        MergeMethod.MAGNITUDE_PRUNE,
        MergeMethod.KNOTS,
    }
)
#: methods whose majority-sign option is used
SIGN_METHODS = frozenset({MergeMethod.TIES, MergeMethod.DARE_TIES, MergeMethod.KNOTS})
#: methods that draw random numbers
RANDOM_METHODS = frozenset({MergeMethod.DARE_LINEAR, MergeMethod.DARE_TIES})
#: allowed spaces per method, the first being the default
SPACES: dict[MergeMethod, tuple[MergeSpace, ...]] = {
    MergeMethod.LINEAR: (MergeSpace.FACTOR, MergeSpace.DELTA),
    MergeMethod.TASK_ARITHMETIC: (MergeSpace.DELTA, MergeSpace.FACTOR),
    MergeMethod.TIES: (MergeSpace.FACTOR, MergeSpace.DELTA),
    MergeMethod.DARE_LINEAR: (MergeSpace.FACTOR, MergeSpace.DELTA),
    MergeMethod.DARE_TIES: (MergeSpace.FACTOR, MergeSpace.DELTA),
    MergeMethod.MAGNITUDE_PRUNE: (MergeSpace.FACTOR, MergeSpace.DELTA),
    MergeMethod.CAT: (MergeSpace.DELTA,),
    MergeMethod.SVD: (MergeSpace.DELTA,),
    MergeMethod.KNOTS: (MergeSpace.DELTA,),
}
#: default weights: 1/n each (an average) or 1 each (a sum, or a disjoint mean for TIES)
MEAN_WEIGHT_METHODS = frozenset(
    {
        MergeMethod.LINEAR,
        MergeMethod.DARE_LINEAR,
        MergeMethod.MAGNITUDE_PRUNE,
        MergeMethod.CAT,
        MergeMethod.SVD,
    }
)
DEFAULT_DENSITY = 0.5


@dataclass(frozen=True)
class MergeConfig:
    """What to merge and how. ``None`` fields take the method's default (see :meth:`resolve`).

    - ``weights``: one per input, any sign, need not sum to 1. Default: ``1/n`` each for linear,
      dare-linear, magnitude-prune, cat, svd (an average); ``1`` each for task-arithmetic (a sum)
      and ties, dare-ties, knots (TIES' disjoint merge already averages).
    - ``density``: fraction of entries kept, in (0, 1]; default 0.5 where the method prunes.
    - ``space``: ``factor`` (default of linear, ties, dare-*, magnitude-prune) or ``delta``
      (default and only space of cat, svd, knots; default of task-arithmetic).
    - ``rank``: output rank in delta space; default per module the sum of the input ranks.
    - ``seed``: seeds the ``torch.Generator`` of DARE.
    - ``knots_merge``: the merge KnOTS applies to the aligned blocks (ties or task-arithmetic).
    - ``ties_vote``: delta-space ties/dare-ties: ``unweighted`` (PEFT's ``ties_svd``: the sign
      vote ignores the weights, which enter the disjoint merge) or ``weighted`` (weights folded
      into the task vectors before the vote); see :class:`TiesVote`.
    """

    method: MergeMethod = MergeMethod.CAT
    weights: tuple[float, ...] | None = None
    density: float | None = None
    majority_sign: MajoritySign = MajoritySign.TOTAL
    space: MergeSpace | None = None
    rank: int | None = None
    seed: int = 0
    knots_merge: KnotsMerge = KnotsMerge.TIES
    ties_vote: TiesVote = TiesVote.UNWEIGHTED

    def __post_init__(self) -> None:
        for name, enum in (
            ("method", MergeMethod),
            ("majority_sign", MajoritySign),
            ("knots_merge", KnotsMerge),
            ("ties_vote", TiesVote),
        ):
            object.__setattr__(
                self,
                name,
                enum_option(enum, getattr(self, name), name, error=MergeError, message=BAD_CHOICE),
            )
        if self.space is not None:
            object.__setattr__(
                self,
                "space",
                enum_option(MergeSpace, self.space, "space", error=MergeError, message=BAD_CHOICE),
            )
            allowed = SPACES[self.method]
            if self.space not in allowed:
                names = ", ".join(s.value for s in allowed)
                raise MergeError(
                    f"method {self.method.value} works in {names} space only, "
                    f"not {self.space.value}"
                )
        if self.weights is not None:
            try:
                weights = tuple(float(w) for w in self.weights)
            except (TypeError, ValueError) as exc:
                raise MergeError(f"weights must be numbers, got {self.weights!r}") from exc
            if not weights:
                raise MergeError("weights: got an empty list; give one weight per input")
            bad = [w for w in weights if not math.isfinite(w)]
            if bad:
                raise MergeError(f"weights must be finite, got {bad}")
            object.__setattr__(self, "weights", weights)
        if self.density is not None:
            d = self.density
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not (0.0 < d <= 1.0):
                raise MergeError(f"density must be in (0, 1], got {d!r}")
            object.__setattr__(self, "density", float(d))
        if self.rank is not None:
            if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
                raise MergeError(f"rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise MergeError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def uses_density(self) -> bool:
        return self.method in DENSITY_METHODS and not (
            self.method is MergeMethod.KNOTS and self.knots_merge is KnotsMerge.TASK_ARITHMETIC
        )

    @property
    def uses_sign(self) -> bool:
        return self.method in SIGN_METHODS and not (
            self.method is MergeMethod.KNOTS and self.knots_merge is KnotsMerge.TASK_ARITHMETIC
        )

    def resolve(self, n_inputs: int) -> MergeConfig:
        """This config with weights, density and space filled in for ``n_inputs`` inputs."""
        if n_inputs < 1:
            raise MergeError("nothing to merge: give at least one input")
        weights = self.weights
        if weights is None:
            w = 1.0 / n_inputs if self.method in MEAN_WEIGHT_METHODS else 1.0
            weights = (w,) * n_inputs
        elif len(weights) != n_inputs:
            raise MergeError(
                f"{len(weights)} weight(s) {list(weights)} for {n_inputs} input(s); "
                "give one weight per input"
            )
        density = self.density
        if density is None and self.uses_density:
            density = DEFAULT_DENSITY
        space = self.space if self.space is not None else SPACES[self.method][0]
        return replace(self, weights=weights, density=density, space=space)
