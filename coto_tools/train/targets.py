"""Which ``nn.Linear`` modules get adapters: the task's defaults, kinds, or full names."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from coto_tools.adapters.keys import kind_sort_key, parse_module_name
from coto_tools.errors import OptionError


def resolve_targets(
    model: nn.Module, default_targets: Sequence[str], targets: Sequence[str] | None
) -> list[str]:
    """Module names for ``targets`` (``None``: ``default_targets``), in model order.

    A target is either the full name of an ``nn.Linear`` of ``model`` or a short kind (``q``,
    ``k``, ``v``, ``o``, ``up``, ``down``, ... as :func:`parse_module_name` names them). A kind
    selects every layered ``nn.Linear`` of that kind in the tower(s) the task's default targets
    live in (so ``o`` means every layer's attention output projection of the task's encoder).
    """
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    linear_set = set(linear)
    if targets is None:
        missing = [t for t in default_targets if t not in linear_set]
        if missing:
            raise OptionError(f"task default target(s) not nn.Linear in the model: {missing[:3]}")
        return list(default_targets)
    towers = {parse_module_name(t).tower for t in default_targets}
    keys = {n: parse_module_name(n) for n in linear}
    layered = [
        n for n in linear if keys[n].layer is not None and (not towers or keys[n].tower in towers)
    ]
    chosen: set[str] = set()
    for t in targets:
        if t in linear_set:
            chosen.add(t)
            continue
        if "." in t:
            raise OptionError(f"target {t!r}: no nn.Linear of that name in the model")
        hits = [n for n in layered if keys[n].kind == t]
        if not hits:
            kinds = sorted({str(keys[n].kind) for n in layered}, key=kind_sort_key)
            raise OptionError(
                f"target {t!r}: no module of that kind; kinds available: {', '.join(kinds)} "
                "(or give full module names)"
            )
        chosen.update(hits)
    return [n for n in linear if n in chosen]
