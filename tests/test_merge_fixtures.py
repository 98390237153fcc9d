"""Tiny random LoRA adapters for the merge tests (helpers only; no tests here)."""

from __future__ import annotations

import torch

from coto_tools.adapters import LoraAdapter, LoraModule

SHAPES = {  # name -> (out_features, in_features)
    "model.layers.0.self_attn.q_proj": (12, 10),
    "model.layers.0.mlp.up_proj": (16, 10),
    "model.layers.1.self_attn.q_proj": (12, 10),
}


def make_adapter(
    seed: int,
    *,
    rank: int = 4,
    alpha: float = 8.0,
    shapes: dict[str, tuple[int, int]] | None = None,
    extras: dict[str, torch.Tensor] | None = None,
    source: str = "<test>",
) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    mods = {
        name: LoraModule(
            A=torch.randn(rank, i, generator=g), B=torch.randn(o, rank, generator=g), alpha=alpha
        )
        for name, (o, i) in (shapes or SHAPES).items()
    }
    return LoraAdapter(mods, modules_to_save=extras or {}, source=source)
