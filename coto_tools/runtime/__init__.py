"""Gated LoRA runtime and the evaluator built on it."""

from __future__ import annotations

from coto_tools.runtime.gated import GatedLoraLinear, GatedModel, fresh_adapter, inject

__all__ = ["GatedLoraLinear", "GatedModel", "fresh_adapter", "inject"]
