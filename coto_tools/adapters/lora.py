"""Pure-data LoRA adapters: per-module factors A (r x in), B (out x r) and alpha."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from coto_tools.adapters.keys import ModuleKey, parse_module_name
from coto_tools.errors import CheckpointError


@dataclass(frozen=True)
class LoraModule:
    """One LoRA module: ``ΔW = scaling · B @ A``, ``A: (r, in_features)``, ``B: (out_features, r)``.

    ``scaling`` is ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA (Kalajdzievski 2023,
    arXiv 2312.03732).
    """

    A: torch.Tensor
    B: torch.Tensor
    alpha: float
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if self.A.ndim != 2 or self.B.ndim != 2:
            raise CheckpointError(
                f"LoRA factors must be 2-D, got A {tuple(self.A.shape)} and B {tuple(self.B.shape)}"
            )
        if self.A.shape[0] != self.B.shape[1]:
            raise CheckpointError(
                f"rank mismatch: A has {self.A.shape[0]} rows, B has {self.B.shape[1]} columns"
            )
        if self.A.shape[0] == 0:
            raise CheckpointError("rank 0: A and B have no rows/columns")

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[0])

    @property
    def scaling(self) -> float:
        r = self.rank
        return float(self.alpha) / (math.sqrt(r) if self.use_rslora else r)

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``ΔW = scaling · B @ A``, shape ``(out_features, in_features)``, in ``dtype``."""
        return self.scaling * (self.B.to(dtype) @ self.A.to(dtype))

    def delta_norm(self) -> float:
        """``||ΔW||_F`` without forming ΔW: ``s · sqrt(trace((BᵀB)(AAᵀ)))``."""
        a = self.A.double()
        b = self.B.double()
        val = torch.sum((b.T @ b) * (a @ a.T)).clamp_min(0.0)
        return float(abs(self.scaling) * math.sqrt(float(val)))


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter: module name (PEFT's, without ``base_model.model.``) -> LoraModule.

    ``modules_to_save`` holds any non-LoRA tensors of the checkpoint (keys as in the file),
    carried through untouched. ``config`` is the source's adapter config (informational).
    """

    modules: Mapping[str, LoraModule]
    config: Mapping[str, Any] = field(default_factory=dict)
    modules_to_save: Mapping[str, torch.Tensor] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", MappingProxyType(dict(self.modules)))
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "modules_to_save", MappingProxyType(dict(self.modules_to_save)))

    def __len__(self) -> int:
        return len(self.modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __getitem__(self, name: str) -> LoraModule:
        return self.modules[name]

    @property
    def names(self) -> list[str]:
        return list(self.modules)

    def keys(self) -> dict[str, ModuleKey]:
        return {n: parse_module_name(n) for n in self.modules}

    def delta(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.modules[name].delta(dtype)

    def subset(self, names: Iterable[str]) -> LoraAdapter:
        """The adapter restricted to ``names`` (in this adapter's order)."""
        keep = set(names)
        unknown = keep - set(self.modules)
        if unknown:
            raise CheckpointError(f"{self.source}: no such module(s): {sorted(unknown)}")
        return LoraAdapter(
            {n: m for n, m in self.modules.items() if n in keep},
            config=self.config,
            modules_to_save=self.modules_to_save,
            source=self.source,
        )

    def replace(self, **changes: Any) -> LoraAdapter:
        fields: dict[str, Any] = {
            "modules": self.modules,
            "config": self.config,
            "modules_to_save": self.modules_to_save,
            "source": self.source,
        }
        fields.update(changes)
        return LoraAdapter(**fields)
