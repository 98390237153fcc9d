"""coto-tools: analyse what LoRA adapters learned, and what they can do afterwards."""

from __future__ import annotations

__version__ = "0.1.0"
