"""Gated LoRA runtime and the evaluator built on it."""

from __future__ import annotations

from coto_tools.runtime.evaluator import Evaluator, PerExample
from coto_tools.runtime.gated import GatedLoraLinear, GatedModel, fresh_adapter, inject

__all__ = ["Evaluator", "GatedLoraLinear", "GatedModel", "PerExample", "fresh_adapter", "inject"]
