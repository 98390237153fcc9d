"""The verdict rule of the claims: a paired t test with the training seed as the unit of
replication, its smallest detectable difference, and the seeds a claim would need.

Pure numpy/scipy on numbers: no model, no file (tested by simulation in
``tests/reproduce/test_stats.py``).

The test (:func:`paired_test`). A claim gives, per *unit* ``u = 1..k`` (a training seed; a
disjoint pair or triple of seeds for merges and barriers, so no two units share a seed), the
paired difference ``x_u`` of its primary measure, signed so that ``x_u > 0`` means CoTo is
better. LoRA and CoTo runs of one seed share the adapter initialisation and the data order,
and every run is evaluated on the same documents, so the comparison is paired twice: by seed
and by document.

- ``d = mean(x_u)``, ``SE_seed^2 = var(x_u) / k`` (sample variance over units).
- Documents (accuracy measures only, when per-document results are kept): ``D_j`` = the paired
  per-document difference averaged over units, ``SE_doc^2 = var(D_j) / N``. This is the
  sampling error of *which* documents were drawn (a method x document interaction): the
  documents are shared, so the part of their noise common to both methods cancels (this is
  the paired "floor", much smaller than the binomial ``p(1-p)/N`` of one accuracy). It also
  holds a little of the seed x document noise already in ``SE_seed``, so it errs on the
  conservative side.
- ``SE^2 = SE_seed^2 + SE_doc^2``, degrees of freedom by Welch-Satterthwaite:
  ``df = SE^4 / (SE_seed^4 / (k - 1) + SE_doc^4 / (N - 1))`` (``k - 1`` without documents).
- Verdict at two-sided level ``ALPHA`` = 0.05: *holds* if ``d / SE > t(1 - ALPHA/2, df)``,
  *does not hold* if ``d / SE < -t(1 - ALPHA/2, df)``, else *inconclusive*. Under no true
  difference each wrong verdict has probability at most ``ALPHA / 2`` (exactly, for normal
  unit differences), so each is at most 2.5%, not the 5% the claims allow.
- Fewer than 2 units: no spread to estimate, the claim is *undecidable* at these seeds.
- Smallest detectable difference (:func:`detectable`): the true ``d`` that gives *holds* with
  probability ``POWER`` = 0.8 at this ``SE`` and ``df`` (noncentral t). A result is
  *inconclusive* with this sentence: any true difference is probably smaller than that.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.80
HOLDS, FAILS, INCONCLUSIVE, UNDECIDABLE = "holds", "does not hold", "inconclusive", "undecidable"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, UNDECIDABLE)

METHOD = (
    "paired t test, training seed as the unit (disjoint seed pairs/triples for merges and "
    "barriers), per-document paired differences added as a second variance component "
    "(Welch-Satterthwaite degrees of freedom); two-sided alpha 0.05, so each wrong verdict "
    "has probability at most 2.5% under no true difference (checked by simulation in "
    "tests/reproduce/test_stats.py); smallest detectable difference at 80% power"
)


@dataclass(frozen=True)
class Paired:
    """The result of :func:`paired_test` (see the module docstring for every field)."""

    d: float | None
    se: float | None
    se_seed: float | None
    se_doc: float | None
    df: float | None
    t_crit: float | None
    p_value: float | None
    units: int
    n_docs: int | None
    verdict: str
    mde: float | None
    unit_sd: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "d": self.d,
            "se": self.se,
            "se_seed": self.se_seed,
            "se_doc": self.se_doc,
            "df": self.df,
            "t_crit": self.t_crit,
            "p_value": self.p_value,
            "units": self.units,
            "n_docs": self.n_docs,
            "verdict": self.verdict,
            "mde": self.mde,
            "unit_sd": self.unit_sd,
        }


def _finite(x: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray([float(a) for a in x if a is not None], dtype=np.float64)
    return v[np.isfinite(v)]


def paired_test(
    unit_diffs: Sequence[float] | np.ndarray,
    *,
    doc_diffs: Sequence[float] | np.ndarray | None = None,
    alpha: float = ALPHA,
    power: float = POWER,
    with_mde: bool = True,
) -> Paired:
    """Verdict on paired differences ``x_u`` per unit (> 0: CoTo better) and, optionally, the
    per-document paired differences averaged over units ``D_j`` (module docstring).
    ``with_mde=False`` skips the smallest detectable difference (simulations)."""
    x = _finite(unit_diffs)
    k = int(x.size)
    docs = None if doc_diffs is None else _finite(doc_diffs)
    n = None if docs is None or docs.size < 2 else int(docs.size)
    d = float(x.mean()) if k else None
    if k < 2:
        return Paired(d, None, None, None, None, None, None, k, n, UNDECIDABLE, None, None)
    sd = float(x.std(ddof=1))
    v_seed = sd**2 / k
    v_doc = float(docs.var(ddof=1)) / n if docs is not None and n is not None else 0.0
    var = v_seed + v_doc
    df = _satterthwaite(v_seed, k - 1, v_doc, (n or 2) - 1)
    se = math.sqrt(var)
    if se == 0.0:  # every unit and document identical: nothing to judge
        verdict = INCONCLUSIVE if d == 0.0 else (HOLDS if (d or 0.0) > 0 else FAILS)
        return Paired(d, 0.0, 0.0, 0.0, df, None, None, k, n, verdict, 0.0, sd)
    t_crit = float(sps.t.ppf(1.0 - alpha / 2.0, df))
    t = (d or 0.0) / se
    p = float(2.0 * sps.t.sf(abs(t), df))
    verdict = HOLDS if t > t_crit else FAILS if t < -t_crit else INCONCLUSIVE
    return Paired(
        d,
        se,
        math.sqrt(v_seed),
        math.sqrt(v_doc) if n is not None else None,
        df,
        t_crit,
        p,
        k,
        n,
        verdict,
        detectable(se, df, alpha=alpha, power=power) if with_mde else None,
        sd,
    )


def _satterthwaite(v1: float, df1: float, v2: float, df2: float) -> float:
    num = (v1 + v2) ** 2
    den = (v1**2 / df1 if df1 > 0 else 0.0) + (v2**2 / df2 if df2 > 0 and v2 > 0 else 0.0)
    return float(num / den) if den > 0 else float(max(df1, 1.0))


def detectable(se: float, df: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true difference ``δ`` at which the test says *holds* with probability ``power``:
    ``P(T > t(1 - alpha/2, df)) = power`` for ``T`` noncentral t with ``df`` degrees of
    freedom and noncentrality ``δ / se`` (``df`` rounded to 0.01 for caching)."""
    if se <= 0:
        return 0.0
    return _ncp(round(float(df), 2), alpha, power) * se


@functools.lru_cache(maxsize=8192)
def _ncp(df: float, alpha: float, power: float) -> float:
    t_crit = float(sps.t.ppf(1.0 - alpha / 2.0, df))

    def gap(ncp: float) -> float:
        return float(sps.nct.sf(t_crit, df, ncp)) - power

    hi = t_crit + 10.0
    while gap(hi) < 0:
        hi *= 2.0
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-7))


def seeds_needed(
    target: float | None,
    *,
    unit_sd: float | None,
    se_doc: float | None,
    seeds_per_unit: int = 1,
    max_units: int = 200,
    alpha: float = ALPHA,
    power: float = POWER,
) -> int | None:
    """Smallest number of seeds whose units make ``target`` detectable (80% power), assuming
    the unit spread ``unit_sd`` and document term ``se_doc`` measured here; ``None`` when
    ``target`` is unknown or zero, the spread is unknown, or no number up to ``max_units``
    units suffices (the document term alone is too large: more documents are needed)."""
    if target is None or unit_sd is None or not math.isfinite(target) or target == 0.0:
        return None
    v_doc = (se_doc or 0.0) ** 2

    def mde(k: int) -> float:
        v_seed = unit_sd**2 / k
        se = math.sqrt(v_seed + v_doc)
        df = _satterthwaite(v_seed, k - 1, v_doc, 10_000 if v_doc else 1)
        return detectable(se, df, alpha=alpha, power=power)

    if mde(max_units) > abs(target):
        return None
    lo, hi = 1, max_units  # mde(k) falls with k: the smallest k with mde(k) <= target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mde(mid) <= abs(target):
            hi = mid
        else:
            lo = mid
    return max(hi, 2) * seeds_per_unit


def min_seeds(seeds_per_unit: int = 1) -> int:
    """Seeds for the smallest decidable claim: two units."""
    return 2 * seeds_per_unit


def disjoint_groups(seeds: Sequence[int], size: int) -> list[tuple[int, ...]]:
    """Consecutive disjoint groups of ``size`` seeds in sorted order ((0, 1), (2, 3), ...): no
    seed appears in two groups, so the groups' values are independent units."""
    s = sorted(set(int(x) for x in seeds))
    return [tuple(s[i : i + size]) for i in range(0, len(s) - size + 1, size)]
