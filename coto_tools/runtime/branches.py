"""Branches and canonical configuration keys, shared by every evaluator.

A *branch* is one adapter module in a model: ``(adapter name, module name)``. A configuration
gives gates to branches (``{module: gate}`` for the only or ``"default"`` adapter,
``{(adapter, module): gate}`` for any); its canonical key is the tuple of the gates of all
branches in :func:`branch_order` (branches not named: gate 0). The local evaluator, a Ray driver
and its workers build the same :class:`BranchKeys` from the same adapters, so a key computed in
one place addresses results computed in another.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.adapters.players import Players
from coto_tools.errors import OptionError
from coto_tools.runtime.prefix import module_layer

DEFAULT = "default"
Branch = tuple[str, str]  # (adapter name, module name)
Config = Mapping[str, float] | Mapping[Branch, float] | Mapping[str | Branch, float]
ConfigKey = tuple[float, ...]


def branch_order(branch: Branch) -> tuple[int, str, str]:
    """Sort key of a branch ``(adapter, module)``: encoder layer (lowest first; ``-1`` for a
    module outside ``encoder.layer.<i>``), then adapter name, then module name."""
    layer = module_layer(branch[1])
    return (-1 if layer is None else layer, branch[0], branch[1])


class BranchKeys:
    """The branches of named adapters in canonical order (:func:`branch_order`) and the
    canonical key of a configuration: the gate of every branch in that order.

    Built identically by every evaluator of the same adapters (local, or a Ray driver and its
    workers), so keys computed in one place address results computed in another."""

    def __init__(self, adapters: Mapping[str, LoraAdapter]) -> None:
        if not adapters:
            raise OptionError("no adapters to evaluate")
        self.adapter_names: tuple[str, ...] = tuple(adapters)
        branches = [(a, m) for a, ad in adapters.items() for m in ad.modules]
        self.branches: list[Branch] = sorted(branches, key=branch_order)
        self._index = {b: i for i, b in enumerate(self.branches)}

    def __len__(self) -> int:
        return len(self.branches)

    def resolve(self, k: Hashable) -> Branch:
        """The branch a configuration key names: ``(adapter, module)``, or a module name of the
        only (or the ``"default"``) adapter."""
        if isinstance(k, tuple):
            if len(k) != 2 or k not in self._index:
                raise OptionError(f"unknown branch {k!r}; adapters: {sorted(self.adapter_names)}")
            return k
        if not isinstance(k, str):
            raise OptionError(
                f"configuration key {k!r}: expected a module name or (adapter, module)"
            )
        adapter = DEFAULT if DEFAULT in self.adapter_names else None
        if adapter is None and len(self.adapter_names) == 1:
            adapter = self.adapter_names[0]
        if adapter is None:
            raise OptionError(
                f"module {k!r} without an adapter name, but there are several adapters "
                f"({sorted(self.adapter_names)}): use (adapter, module) keys"
            )
        if (adapter, k) not in self._index:
            raise OptionError(f"module {k!r} is not in adapter {adapter!r}")
        return (adapter, k)

    def key(self, config: Config) -> ConfigKey:
        """Canonical hashable key of ``config`` (branches not named: gate 0)."""
        gates = [0.0] * len(self.branches)
        for k, g in config.items():
            branch = self.resolve(k)
            if isinstance(g, torch.Tensor) and g.numel() != 1:
                raise OptionError(f"gate of {branch}: per-row tensor gates are not supported here")
            v = float(g)
            if not math.isfinite(v):
                raise OptionError(f"gate of {branch} is {v}; gates must be finite")
            gates[self._index[branch]] = v + 0.0  # -0.0 -> 0.0
        return tuple(gates)

    def config(self, key: ConfigKey) -> dict[Branch, float]:
        """The configuration of a canonical key (inverse of :meth:`key`)."""
        return dict(zip(self.branches, key, strict=True))

    def mask_config(
        self, players: Players, mask: Sequence[bool] | np.ndarray, adapter: str = DEFAULT
    ) -> dict[Branch, float]:
        """Configuration switching on the modules of ``players`` selected by ``mask``."""
        if adapter not in self.adapter_names:
            raise OptionError(f"unknown adapter {adapter!r}; known: {sorted(self.adapter_names)}")
        return {(adapter, m): g for m, g in players.gates(mask).items()}


__all__ = ["DEFAULT", "Branch", "BranchKeys", "Config", "ConfigKey", "branch_order"]
