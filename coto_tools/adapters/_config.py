"""``adapter_config.json``: reading, type checks, variant refusal and PEFT's pattern rule."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import regex  # matching with a timeout (see MATCH_TIMEOUT_S)

from coto_tools.errors import CheckpointError, CotoError, UnsupportedAdapterError

PEFT_DEFAULT_ALPHA = 8  # LoraConfig.lora_alpha's default in PEFT

# Config fields that turn LoRA into a variant with a different forward pass (PEFT 0.21 names).
_VARIANT_FIELDS = (
    ("use_dora", "DoRA (use_dora=true)"),
    ("lora_bias", "lora_bias=true"),
    ("alora_invocation_tokens", "activated LoRA (alora_invocation_tokens)"),
    ("use_qalora", "QALoRA (use_qalora=true)"),
    ("use_bdlora", "block-diagonal LoRA (use_bdlora)"),
    ("velora_config", "VeLoRA (velora_config)"),
    ("monteclora_config", "MonteCLoRA (monteclora_config)"),
    ("kasa_config", "KaSA (kasa_config)"),
    ("arrow_config", "Arrow routing (arrow_config)"),
    ("layer_replication", "layer_replication"),
    ("target_parameters", "LoRA on parameters (target_parameters)"),
    ("trainable_token_indices", "trainable tokens (trainable_token_indices)"),
)


def read_config(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (invalid JSON)") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON: {exc.msg} at line {exc.lineno}") from exc
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: invalid JSON") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_config(cfg: Mapping[str, Any], source: str) -> list[str]:
    """Problems with the config's types; raises at once for unsupported LoRA variants."""
    peft_type = cfg.get("peft_type")
    if peft_type is not None and str(peft_type).upper() != "LORA":
        raise UnsupportedAdapterError(
            f"{source}: peft_type {peft_type!r} is not supported (only LORA)"
        )
    for key, what in _VARIANT_FIELDS:
        val = cfg.get(key)
        if val not in (None, False, [], {}, 0):
            raise UnsupportedAdapterError(f"{source}: {what} is not supported; only plain LoRA")
    bias = cfg.get("bias", "none")
    if bias not in (None, "none"):
        raise UnsupportedAdapterError(
            f"{source}: bias={bias!r} (trained biases) is not supported; only bias='none'"
        )
    problems: list[str] = []

    def bad(key: str, want: str) -> None:
        problems.append(f"config field {key!r} must be {want}, got {cfg[key]!r}")

    if cfg.get("r") is not None and (not _is_int(cfg["r"]) or cfg["r"] <= 0):
        bad("r", "a positive integer")
    if cfg.get("lora_alpha") is not None and (
        not _is_num(cfg["lora_alpha"])
        or not math.isfinite(cfg["lora_alpha"])
        or cfg["lora_alpha"] <= 0
    ):
        bad("lora_alpha", "a finite number > 0 (as --alpha)")
    for key in ("use_rslora", "fan_in_fan_out", "inference_mode"):
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            bad(key, "true or false")
    if cfg.get("lora_dropout") is not None and (
        not _is_num(cfg["lora_dropout"]) or not 0 <= cfg["lora_dropout"] < 1
    ):
        bad("lora_dropout", "a number in [0, 1)")
    for key in ("base_model_name_or_path", "revision", "task_type"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            bad(key, "a string or null")
    tm = cfg.get("target_modules")
    if tm is not None and not (
        isinstance(tm, str) or (isinstance(tm, list) and all(isinstance(t, str) for t in tm))
    ):
        bad("target_modules", "a list of strings or a string")
    mts = cfg.get("modules_to_save")
    if mts is not None and not (isinstance(mts, list) and all(isinstance(t, str) for t in mts)):
        bad("modules_to_save", "a list of strings or null")
    for key, ok, want in (
        ("rank_pattern", lambda v: _is_int(v) and v > 0, "positive integers"),
        ("alpha_pattern", lambda v: _is_num(v) and math.isfinite(v) and v > 0, "numbers > 0"),
    ):
        pat = cfg.get(key)
        if pat is None:
            continue
        if not isinstance(pat, dict):
            bad(key, "an object mapping module patterns to values")
            continue
        for k, v in pat.items():
            if not ok(v):
                problems.append(f"config field {key!r}: {k!r} maps to {v!r}; expected {want}")
            if (problem := _pattern_problem(key, k)) is not None:
                problems.append(problem)
    return problems


MAX_PATTERN_LENGTH = 1000
"""Longest ``rank_pattern``/``alpha_pattern`` key accepted (PEFT's are module names or short
regular expressions)."""
MATCH_TIMEOUT_S = 0.25
"""Most time one pattern may take to match one module name. Patterns come from untrusted files:
a pattern such as ``(.*)*Z`` backtracks without bound in Python's ``re`` (PEFT itself would hang
on it); the match runs in the ``regex`` engine (the same syntax and matching rule) with this
timeout, and a pattern that exceeds it is refused."""


def _pattern_problem(key: str, pattern: str) -> str | None:
    if len(pattern) > MAX_PATTERN_LENGTH:
        return (
            f"config field {key!r}: a pattern of {len(pattern)} characters (at most "
            f"{MAX_PATTERN_LENGTH})"
        )
    try:
        re.compile(rf"(.*\.)?({pattern})$")
    except (re.error, RecursionError, OverflowError) as exc:
        return f"config field {key!r}: {pattern!r} is not a valid pattern ({exc})"
    return None


def _match(pattern: str, name: str) -> bool:
    """PEFT's rule, ``re.match(rf"(.*\\.)?({pattern})$", name)``, bounded in time."""
    try:
        return regex.match(rf"(.*\.)?({pattern})$", name, timeout=MATCH_TIMEOUT_S) is not None
    except TimeoutError:
        raise CheckpointError(
            f"pattern {pattern!r} (rank_pattern/alpha_pattern) takes longer than "
            f"{MATCH_TIMEOUT_S} s to match {name!r}: it backtracks without bound (PEFT would "
            "hang on it); refused, write it without nested repetition such as (.*)*"
        ) from None
    except (regex.error, RecursionError, OverflowError):  # reported by check_config
        return False


def search_bounded(pattern: str, text: str, *, source: str) -> bool:
    """``re.search(pattern, text)``, bounded in time as :func:`pattern_value` (for regular
    expressions from user files, e.g. ``--players-map``); ``source`` names the file."""
    try:
        return regex.search(pattern, text, timeout=MATCH_TIMEOUT_S) is not None
    except TimeoutError:
        raise CotoError(
            f"{source}: pattern {pattern!r} takes longer than {MATCH_TIMEOUT_S} s to search "
            f"{text!r}: it backtracks without bound; refused"
        ) from None


def pattern_value(patterns: Mapping[str, Any], name: str) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern (in order) with ``(.*\\.)?(pattern)$``
    matching ``name`` gives the value; ``None`` when none matches. Each match is bounded in time
    (:data:`MATCH_TIMEOUT_S`); a pattern that backtracks without bound raises
    :class:`CheckpointError`."""
    for pattern, value in patterns.items():
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_LENGTH:
            continue  # reported by check_config
        if _match(pattern, name):
            return value
    return None
