"""The two spaces an LMC path can live in: adapter deltas, or adapter factors.

A point of a path or plane is a weight vector ``w`` over ``n`` adapters (``(1 - a, a)`` on a
path, ``(1 - u - v, u, v)`` on a plane). What the point *is* depends on the space:

- **delta** space: ``ΔW(w) = Σ_k w_k · ΔW_k`` per module, with ``ΔW_k = s_k · B_k @ A_k``.
  It is realised without copying weights: every adapter is injected as its own gated branch
  and branch ``k`` gets gate ``w_k`` on each of its modules (:func:`delta_gates`).
- **factor** space: the factors are interpolated separately, as linear merging of factors
  does (PEFT's ``linear`` combination up to its weight convention):
  ``A(w) = Σ_k w_k · A_k`` and ``B̃(w) = Σ_k w_k · s_k · B_k`` per module, so
  ``ΔW(w) = B̃(w) @ A(w)`` and the cross terms ``w_j w_k s_k B_k A_j`` are included
  (:func:`interpolate_factors`).

Scalings in factor space: the scaling ``s_k`` is folded into ``B_k`` before interpolating
(``B̃_k = s_k · B_k``), so adapters with different ``alpha`` or rank conventions are combined
by what they actually add to the weight. The interpolated module is stored as
``scaling_ref · B(w) @ A(w)`` with ``B(w) = Σ_k w_k (s_k / s_ref) B_k``, where ``ref`` is the
adapter with the largest weight (first on ties) that holds the module: the product is the same
for any choice of ``ref``; this one makes a corner (``w = e_k``) reproduce adapter ``k``'s module
bit for bit, and, when all scalings are equal (``s_k / s_ref == 1.0``), it is exactly the
interpolation of the raw factors with that common scaling. Factor interpolation pairs rank
component ``i`` of one adapter with component ``i`` of the other, so ranks must agree per
module (there is no canonical pairing otherwise; use delta space).

Modules held by only some adapters: a missing module counts as zero (``ΔW_k = 0``, or
``A_k = B_k = 0`` in factor space, so a module only in ``A`` becomes ``(1 - a)² ΔW_A`` along a
factor path but ``(1 - a) ΔW_A`` along a delta path). Weights that are exactly ``0.0`` are
skipped, so a corner never contains another adapter's terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np
import torch

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.errors import OptionError


class Space(str, Enum):
    """Where a path is interpolated: ``delta`` (ΔW = s·B@A) or ``factor`` (A and B separately)."""

    delta = "delta"
    factor = "factor"


class SpaceChoice(str, Enum):
    """The CLI's ``--space``: one space or ``both``."""

    delta = "delta"
    factor = "factor"
    both = "both"

    def spaces(self) -> tuple[Space, ...]:
        return _SPACES[self]


_SPACES: dict[SpaceChoice, tuple[Space, ...]] = {
    SpaceChoice.delta: (Space.delta,),
    SpaceChoice.factor: (Space.factor,),
    SpaceChoice.both: (Space.delta, Space.factor),
}

GateConfig = dict[tuple[str, str], float]


def union_modules(adapters: Sequence[LoraAdapter]) -> list[str]:
    """Every module name held by any adapter, in first-seen order."""
    seen: dict[str, None] = {}
    for ad in adapters:
        for name in ad.modules:
            seen.setdefault(name, None)
    return list(seen)


def one_sided(adapters: Sequence[LoraAdapter]) -> dict[str, list[int]]:
    """Modules not held by every adapter: ``{module: [indices of the adapters holding it]}``."""
    out: dict[str, list[int]] = {}
    for name in union_modules(adapters):
        holders = [k for k, ad in enumerate(adapters) if name in ad.modules]
        if len(holders) < len(adapters):
            out[name] = holders
    return out


def check_compatible(adapters: Sequence[LoraAdapter], space: Space) -> None:
    """Raise :class:`OptionError` naming every module whose shapes (or, in factor space,
    ranks) disagree between the adapters holding it."""
    problems: list[str] = []
    for name in union_modules(adapters):
        held = [(k, ad.modules[name]) for k, ad in enumerate(adapters) if name in ad.modules]
        shapes = {(m.out_features, m.in_features) for _, m in held}
        if len(shapes) > 1:
            problems.append(f"{name}: shapes (out x in) differ: {sorted(shapes)}")
            continue
        if space is Space.factor:
            ranks = [m.rank for _, m in held]
            if len(set(ranks)) > 1:
                problems.append(
                    f"{name}: ranks differ ({', '.join(str(r) for r in ranks)}); factor-space "
                    "interpolation needs equal ranks, use --space delta"
                )
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise OptionError(f"adapters cannot be interpolated: {'; '.join(problems[:3])}{more}")


def delta_gates(
    names: Sequence[str], adapters: Sequence[LoraAdapter], weights: Sequence[float]
) -> GateConfig:
    """Gates ``{(branch, module): w_k}`` realising ``Σ_k w_k ΔW_k``, one branch per adapter.

    A weight of exactly 0 becomes the gate ``0.0``, which the runtime skips entirely.
    """
    if not (len(names) == len(adapters) == len(weights)):
        raise OptionError("delta_gates: names, adapters and weights must have the same length")
    gates: GateConfig = {}
    for name, ad, w in zip(names, adapters, weights, strict=True):
        for module in ad.modules:
            gates[(name, module)] = float(w)
    return gates


def _wide(t: torch.Tensor) -> torch.Tensor:
    """Half-precision factors are combined in float32 (at least)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _interp_module(held: list[tuple[float, LoraModule]]) -> LoraModule | None:
    """``Σ w_k A_k``, ``Σ w_k (s_k / s_ref) B_k``; ref: the largest weight (first on ties)."""
    live = [(w, m) for w, m in held if w != 0.0]
    if not live:
        return None
    _, ref = max(live, key=lambda wm: wm[0])  # max() keeps the first of equal weights
    s_ref = ref.scaling
    A_terms: list[torch.Tensor] = []
    B_terms: list[torch.Tensor] = []
    for w, m in live:
        b_coef = w * (m.scaling / s_ref)  # the ratio is exactly 1.0 when the scalings are equal
        A_terms.append(m.A if w == 1.0 else w * _wide(m.A))
        B_terms.append(m.B if b_coef == 1.0 else b_coef * _wide(m.B))
    A, B = A_terms[0], B_terms[0]
    for a_term, b_term in zip(A_terms[1:], B_terms[1:], strict=True):
        A = A + a_term
        B = B + b_term
    return LoraModule(A=A, B=B, alpha=ref.alpha, use_rslora=ref.use_rslora)


def interpolate_factors(
    adapters: Sequence[LoraAdapter], weights: Sequence[float], *, source: str = "<lmc factor point>"
) -> LoraAdapter:
    """The factor-space point ``w``: per module ``A(w) = Σ w_k A_k``, ``s·B(w) = Σ w_k s_k B_k``.

    See the module docstring for how scalings are folded and how missing modules count (zero).
    Modules whose holders all have weight exactly 0 are left out (they would add nothing).
    Weights may lie outside ``[0, 1]`` (extrapolation). Ranks must agree per module
    (:func:`check_compatible`).
    """
    if len(adapters) != len(weights):
        raise OptionError("interpolate_factors: one weight per adapter is needed")
    mods: dict[str, LoraModule] = {}
    for name in union_modules(adapters):
        held = [
            (float(w), ad.modules[name])
            for ad, w in zip(adapters, weights, strict=True)
            if name in ad.modules
        ]
        m = _interp_module(held)
        if m is not None:
            mods[name] = m
    return LoraAdapter(mods, source=source)


def effective_delta(
    adapters: Sequence[LoraAdapter], weights: Sequence[float], space: Space
) -> dict[str, torch.Tensor]:
    """``{module: ΔW(w)}`` in float64 (for tests and diagnostics; forms full matrices)."""
    out: dict[str, torch.Tensor] = {}
    if space is Space.factor:
        point = interpolate_factors(adapters, weights)
        for name, m in point.modules.items():
            out[name] = m.delta(torch.float64)
        return out
    for ad, w in zip(adapters, weights, strict=True):
        for name, m in ad.modules.items():
            d = float(w) * m.delta(torch.float64)
            out[name] = d if name not in out else out[name] + d
    return out


def delta_gram(adapters: Sequence[LoraAdapter]) -> np.ndarray:
    """``G[i, j] = Σ_modules <ΔW_i, ΔW_j>_F`` in float64, from the factors (no ``out x in`` matrix):
    ``<s_i B_i A_i, s_j B_j A_j> = s_i s_j · Σ (B_iᵀ B_j) ⊙ (A_i A_jᵀ)``; a missing module is 0."""
    n = len(adapters)
    g = np.zeros((n, n), dtype=np.float64)
    for name in union_modules(adapters):
        for i in range(n):
            mi = adapters[i].modules.get(name)
            if mi is None:
                continue
            for j in range(i, n):
                mj = adapters[j].modules.get(name)
                if mj is None:
                    continue
                bb = mi.B.double().T @ mj.B.double()
                aa = mi.A.double() @ mj.A.double().T
                val = mi.scaling * mj.scaling * float(torch.sum(bb * aa))
                g[i, j] += val
                if i != j:
                    g[j, i] += val
    return g
