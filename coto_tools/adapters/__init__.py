"""Adapter checkpoints: pure-data LoRA adapters, name parsing, and safetensors I/O."""

from __future__ import annotations

from coto_tools.adapters.atomic import atomic_path, atomic_write_text
from coto_tools.adapters.io import (
    AdapterCheckpoint,
    CotoWarning,
    load_adapter,
    modules_to_save_names,
    modules_to_save_state_dict,
    open_checkpoint,
    peft_config,
    save_adapter,
    state_dict,
)
from coto_tools.adapters.keys import ModuleKey, kind_sort_key, parse_module_name
from coto_tools.adapters.lora import LoraAdapter, LoraModule

__all__ = [
    "AdapterCheckpoint",
    "CotoWarning",
    "LoraAdapter",
    "LoraModule",
    "ModuleKey",
    "atomic_path",
    "atomic_write_text",
    "kind_sort_key",
    "load_adapter",
    "modules_to_save_names",
    "modules_to_save_state_dict",
    "open_checkpoint",
    "parse_module_name",
    "peft_config",
    "save_adapter",
    "state_dict",
]
