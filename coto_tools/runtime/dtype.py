"""The dtype a model is built in: ``--dtype auto|float32|bfloat16|float16``.

:func:`resolve_dtype` turns a request into a :class:`torch.dtype` for a device: ``auto`` is
float32 on the CPU and, on CUDA, the dtype the model's config names (``dtype``/``torch_dtype`` of
a transformers ``config.json``; float32 when it names none). :func:`check_dtype` validates the
spelling only (a Ray driver may resolve nothing itself).

Accuracy: adapter branches of a half-precision model run in float32 (see
:func:`coto_tools.runtime.gated.branch_dtype`), as PEFT's own forward does, so the gated model in
bfloat16 equals PEFT's model in bfloat16 to float rounding; against float32 the metrics move by
the base model's own bfloat16 rounding (tests: a tiny LLaMA, mean token log-prob within 0.02 nats
of float32, see ``tests/test_llm_adapters.py``).
"""

from __future__ import annotations

import torch

from coto_tools.errors import OptionError

AUTO = "auto"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_CHOICES = "auto, float32, bfloat16, float16"
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
DtypeLike = str | torch.dtype


def check_dtype(dtype: DtypeLike | None) -> str:
    """The request normalised to ``auto``, ``float32``, ``bfloat16`` or ``float16``."""
    if dtype is None:
        return AUTO
    if isinstance(dtype, torch.dtype):
        for name, d in DTYPES.items():
            if d == dtype:
                return name
        raise OptionError(f"--dtype {dtype}: allowed {DTYPE_CHOICES}")
    text = str(dtype).strip().lower().removeprefix("torch.")
    text = _ALIASES.get(text, text)
    if text != AUTO and text not in DTYPES:
        raise OptionError(f"--dtype {dtype!r}: allowed {DTYPE_CHOICES}")
    return text


def resolve_dtype(
    dtype: DtypeLike | None, device: torch.device | str, native: torch.dtype | None = None
) -> torch.dtype:
    """The dtype to build the model in on ``device``; ``native``: the model config's dtype
    (``auto`` on CUDA uses it when it is one of :data:`DTYPES`, else float32)."""
    text = check_dtype(dtype)
    if text != AUTO:
        return DTYPES[text]
    if torch.device(device).type == "cuda" and native in DTYPES.values():
        return native  # type: ignore[return-value]  # checked: a member of DTYPES
    return torch.float32


def config_dtype(config: object) -> torch.dtype | None:
    """The dtype a transformers config names (``dtype`` or the older ``torch_dtype``), if any."""
    for attr in ("dtype", "torch_dtype"):
        value = getattr(config, attr, None)
        if isinstance(value, torch.dtype):
            return value
        if isinstance(value, str):
            text = value.removeprefix("torch.")
            found = DTYPES.get(_ALIASES.get(text, text))
            if found is not None:
                return found
    return None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


__all__ = [
    "AUTO",
    "DTYPES",
    "DTYPE_CHOICES",
    "DtypeLike",
    "check_dtype",
    "config_dtype",
    "dtype_name",
    "resolve_dtype",
]
