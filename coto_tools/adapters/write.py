"""Write LoRA adapters as PEFT directories (``peft.PeftModel.from_pretrained`` loads them) or
bare ``.safetensors`` files (the adapter config in the metadata). Writes are atomic."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from coto_tools.adapters._config import pattern_value
from coto_tools.adapters.atomic import atomic_path
from coto_tools.adapters.lora import LoraAdapter
from coto_tools.errors import CheckpointError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PROVENANCE = "coto_provenance.json"
"""Beside ``adapter_config.json`` in a directory output: what made the adapter (``extra_config``).
Kept out of the config so that PEFT, which warns about keys it does not know, loads it quietly;
:func:`~coto_tools.adapters.io.open_checkpoint` shows it as ``config["coto"]``."""
PEFT_PREFIX = "base_model.model."
# PEFT's in-memory name of a modules_to_save copy: ``<module>.modules_to_save.<adapter>.<param>``
_MTS_INNER = re.compile(r"\.modules_to_save\.[^.]+\.")


def _mts_key(key: str) -> str:
    """A modules_to_save tensor key relative to the base model (``classifier.weight``)."""
    return _MTS_INNER.sub(".", key.removeprefix(PEFT_PREFIX))


def modules_to_save_state_dict(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """The ``modules_to_save`` tensors keyed as in the base model's ``state_dict()``
    (``classifier.weight``), e.g. for ``model.load_state_dict(..., strict=False)``."""
    return {_mts_key(k): t for k, t in adapter.modules_to_save.items()}


def modules_to_save_names(adapter: LoraAdapter) -> list[str] | None:
    """``modules_to_save`` for the config: the source config's entries that cover a carried
    tensor (PEFT matches them as name suffixes), plus the module of any tensor they miss."""
    modules = sorted({k.rsplit(".", 1)[0] for k in modules_to_save_state_dict(adapter) if "." in k})
    if not modules:
        return None
    src = adapter.config.get("modules_to_save")
    listed = [t for t in src if isinstance(t, str)] if isinstance(src, list) else []
    names = [t for t in listed if any(m.endswith(t) for m in modules)]
    names += [m for m in modules if not any(m.endswith(t) for t in names)]
    return names


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def _patterns(values: Mapping[str, Any], default: Any) -> dict[str, Any]:
    """``{module: value}`` for modules whose value differs from ``default``, keyed so that PEFT's
    suffix-regex rule gives every module its own value (exact anchored keys when plain names
    would also match another module)."""
    pat = {n: v for n, v in values.items() if v != default}

    def resolves(p: Mapping[str, Any]) -> bool:
        got = {n: pattern_value(p, n) for n in values}
        return all((default if g is None else g) == values[n] for n, g in got.items())

    if resolves(pat):
        return pat
    return {f"^{re.escape(n)}$": v for n, v in pat.items()}


def _str_or_none(x: Any) -> str | None:
    return x if isinstance(x, str) else None


def peft_config(
    adapter: LoraAdapter,
    *,
    base_model: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``adapter_config.json`` that PEFT loads: ``r``/``lora_alpha`` are the most common
    values, ``rank_pattern``/``alpha_pattern`` name the modules that differ, ``target_modules``
    lists the full module names. ``extra`` is recorded under the ``coto`` key (PEFT warns that
    it ignores that key: :func:`save_adapter` uses it only for bare files, and writes
    :data:`PROVENANCE` beside the config of a directory)."""
    mods = adapter.modules
    if not mods:
        raise CheckpointError(f"{adapter.source}: cannot write an adapter with no modules")
    rslora = {m.use_rslora for m in mods.values()}
    if len(rslora) > 1:
        raise CheckpointError(
            f"{adapter.source}: cannot write an adapter mixing rsLoRA and plain LoRA scalings"
        )
    ranks = {n: m.rank for n, m in mods.items()}
    alphas = {n: _num(m.alpha) for n, m in mods.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    src = dict(adapter.config)
    fan_in_fan_out = src.get("fan_in_fan_out")
    dropout = src.get("lora_dropout")
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": _str_or_none(src.get("task_type")),
        "base_model_name_or_path": base_model
        if base_model is not None
        else _str_or_none(src.get("base_model_name_or_path")),
        "revision": _str_or_none(src.get("revision")),
        "inference_mode": True,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": float(dropout) if isinstance(dropout, (int, float)) else 0.0,
        # Exact module names: PEFT matches list entries as the module's name or a dotted suffix
        # of it, so modules of the same kind that the adapter does not hold stay untouched.
        "target_modules": sorted(mods),
        "fan_in_fan_out": fan_in_fan_out if isinstance(fan_in_fan_out, bool) else False,
        "bias": "none",
        "use_rslora": rslora.pop(),
        "use_dora": False,
        "lora_bias": False,
        "modules_to_save": modules_to_save_names(adapter),
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": _patterns(ranks, r),
        "alpha_pattern": _patterns(alphas, alpha),
    }
    if extra:
        cfg["coto"] = dict(extra)
    return cfg


def _plain(t: torch.Tensor) -> torch.Tensor:
    # detached, on CPU, contiguous, and owning its storage (safetensors refuses shared storage)
    return t.detach().cpu().clone(memory_format=torch.contiguous_format)


def _writable(seen: set[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """For writing only: ``t`` itself when it is a plain CPU tensor owning all of a storage not
    seen before, else :func:`_plain` (safetensors refuses tensors that share storage)."""

    def get(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if (
            t.device.type == "cpu"
            and t.is_contiguous()
            and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size()
            and t.untyped_storage().data_ptr() not in seen
        ):
            seen.add(t.untyped_storage().data_ptr())
            return t
        return _plain(t)

    return get


def state_dict(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """PEFT's saved key names: ``base_model.model.<module>.lora_A.weight``; modules_to_save
    tensors as ``base_model.model.<module>.<param>``. The tensors are copies."""
    return _state_dict(adapter, _plain)


def _state_dict(
    adapter: LoraAdapter, plain: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, m in adapter.modules.items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = plain(m.A)
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = plain(m.B)
    for key, t in modules_to_save_state_dict(adapter).items():
        full = f"{PEFT_PREFIX}{key}"
        if full in out:
            raise CheckpointError(
                f"{adapter.source}: modules_to_save tensor {key} clashes with LoRA"
            )
        out[full] = plain(t)
    return out


def save_adapter(
    adapter: LoraAdapter,
    path: str | Path,
    *,
    force: bool = False,
    base_model: str | None = None,
    extra_config: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``adapter`` as a PEFT directory, or a bare file when ``path`` ends in ``.safetensors``.

    Atomic: written to a temporary sibling, then renamed; an existing ``path`` is refused unless
    ``force``. ``extra_config`` (what made the adapter) is written to :data:`PROVENANCE` in a
    directory output and under the ``coto`` key of the config in a bare file's metadata; both
    read back as ``open_checkpoint(path).config["coto"]``. ``extra_files`` (name -> text) are
    written into a directory output.
    """
    from safetensors.torch import save_file

    path = Path(path)
    bare = path.suffix == ".safetensors"
    cfg = peft_config(adapter, base_model=base_model, extra=extra_config if bare else None)
    tensors = _state_dict(adapter, _writable(set()))  # written, not kept: no copies needed
    if bare:
        if extra_files:
            raise CheckpointError(f"{path}: extra files need a directory output, not a bare file")
        with atomic_path(path, force=force) as tmp:
            save_file(
                tensors, str(tmp), metadata={"adapter_config": json.dumps(cfg), "format": "pt"}
            )
    else:
        for fname in extra_files or {}:
            reserved = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROVENANCE)
            if not fname or Path(fname).name != fname or fname in reserved:
                raise CheckpointError(f"{path}: extra file name {fname!r} is not a plain new name")
        with atomic_path(path, force=force, directory=True) as tmp:
            save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
            if extra_config:
                text = json.dumps(dict(extra_config), indent=2, default=str)
                (tmp / PROVENANCE).write_text(text + "\n")
            for fname, text in (extra_files or {}).items():
                (tmp / fname).write_text(text)
    return path
