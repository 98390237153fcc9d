"""Read LoRA checkpoints: PEFT directories, their ``adapter_model.safetensors``, bare files.

Opening a checkpoint reads only the safetensors header and the config; tensors are read one
module at a time (:meth:`AdapterCheckpoint.module`), so adapters larger than memory allows at
once can be streamed. Validation collects every problem and raises once. Writing lives in
:mod:`coto_tools.adapters.write` (re-exported here).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from coto_tools.adapters._config import PEFT_DEFAULT_ALPHA, check_config, pattern_value, read_config
from coto_tools.adapters._header import (
    FACTOR_DTYPES,
    TORCH_DTYPE_NAMES,
    TensorInfo,
    load_pickle,
    read_header,
)
from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.adapters.write import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PEFT_PREFIX,
    PROVENANCE,
    modules_to_save_names,
    modules_to_save_state_dict,
    peft_config,
    save_adapter,
    state_dict,
)
from coto_tools.errors import CheckpointError, OptionError, UnsupportedAdapterError, ValidationError

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterCheckpoint",
    "CotoWarning",
    "PEFT_PREFIX",
    "PROVENANCE",
    "load_adapter",
    "modules_to_save_names",
    "modules_to_save_state_dict",
    "open_checkpoint",
    "peft_config",
    "save_adapter",
    "state_dict",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
ADAPTER_PICKLE = "adapter_model.bin"

# ``<module>.lora_A[.<adapter>].weight``
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_UNSUPPORTED_KEYS = (
    (re.compile(r"\.lora_magnitude_vector(\.|$)"), "DoRA (lora_magnitude_vector)"),
    (re.compile(r"\.lora_embedding_[AB](\.|$)"), "embedding LoRA (lora_embedding_A/B)"),
    (re.compile(r"\.lora_[AB](?:\.[^.]+)?\.bias$"), "lora_bias (bias on lora_B)"),
    (re.compile(r"\.trainable_tokens_"), "trainable tokens"),
)


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in ``t``: one cheap sum (finite only if every entry is); an overflowing sum of
    finite entries falls back to the exact check."""
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


class CotoWarning(UserWarning):
    """A warning about an input that coto-tools accepted with an assumption."""


@dataclass
class _ModuleEntry:
    a_key: str | None = None
    b_key: str | None = None
    a_shape: tuple[int, ...] = ()
    b_shape: tuple[int, ...] = ()


@dataclass
class AdapterCheckpoint:
    """An opened (not yet loaded) LoRA checkpoint. Create with :func:`open_checkpoint`."""

    path: Path
    weights_path: Path
    config: dict[str, Any]
    module_names: list[str]
    entries: dict[str, _ModuleEntry]
    other_keys: list[str]
    alpha_source: str
    _tensors: Mapping[str, torch.Tensor] | None = field(default=None, repr=False)

    # -- per-module config --------------------------------------------------------------
    def _entry(self, name: str) -> _ModuleEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise CheckpointError(f"{self.weights_path}: no module {name!r}") from None

    def rank_of(self, name: str) -> int:
        return int(self._entry(name).a_shape[0])

    def alpha_of(self, name: str) -> float:
        """``alpha_pattern`` (PEFT's matching rule), else ``lora_alpha``, else the rank."""
        pattern = pattern_value(self.config.get("alpha_pattern") or {}, name)
        if pattern is not None:
            return float(pattern)
        alpha = self.config.get("lora_alpha")
        if alpha is None:
            return float(self.rank_of(name))
        return float(alpha)

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora", False))

    def shapes(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(A shape (r, in), B shape (out, r))`` from the header, without reading tensors."""
        e = self._entry(name)
        return e.a_shape, e.b_shape

    # -- tensor access ------------------------------------------------------------------
    def _get_many(self, keys: list[str], what: str) -> list[torch.Tensor]:
        if self._tensors is not None:
            return [self._tensors[k] for k in keys]
        try:
            with safe_open(str(self.weights_path), framework="pt") as f:
                return [f.get_tensor(k) for k in keys]
        except Exception as exc:  # safetensors / OS errors on a file changed since opening
            msg = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{self.weights_path}: cannot read {what}: {msg}") from exc

    def module(self, name: str, *, check_finite: bool = True) -> LoraModule:
        """Read one module's factors from disk (non-finite values are a ValidationError)."""
        return self.modules([name], check_finite=check_finite)[name]

    def modules(self, names: Sequence[str], *, check_finite: bool = True) -> dict[str, LoraModule]:
        """Read several modules with one opening of the file (faster than :meth:`module` for
        many small modules); the first non-finite module is a ValidationError."""
        if not names:
            return {}
        entries = [(name, self._entry(name)) for name in names]
        keys = [k for _, e in entries for k in (e.a_key, e.b_key) if k is not None]
        what = f"module {names[0]}" if len(names) == 1 else f"modules {names[0]} ... {names[-1]}"
        tensors = iter(self._get_many(keys, what) if keys else [])
        out: dict[str, LoraModule] = {}
        for name, e in entries:
            assert e.a_key is not None and e.b_key is not None  # open_checkpoint guarantees both
            A, B = next(tensors), next(tensors)
            if check_finite:
                bad = [ab for ab, t in (("A", A), ("B", B)) if not _all_finite(t)]
                if bad:
                    which = "lora_" + "/lora_".join(bad)
                    raise ValidationError(
                        str(self.weights_path),
                        [f"module {name}: non-finite values (NaN/Inf) in {which}"],
                    )
            out[name] = LoraModule(A=A, B=B, alpha=self.alpha_of(name), use_rslora=self.use_rslora)
        return out

    def iter_modules(self) -> Iterator[tuple[str, LoraModule]]:
        """``(name, module)`` one at a time; stops at the first non-finite module."""
        for name in self.module_names:
            yield name, self.module(name)

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """The non-LoRA (``modules_to_save``) tensors, keys as in the file."""
        if not self.other_keys:
            return {}
        return dict(
            zip(self.other_keys, self._get_many(self.other_keys, "modules_to_save"), strict=True)
        )

    def load(self) -> LoraAdapter:
        """Read every module (every non-finite module reported at once)."""
        modules: dict[str, LoraModule] = {}
        problems: list[str] = []
        for name in self.module_names:
            try:
                modules[name] = self.module(name)
            except ValidationError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ValidationError(str(self.weights_path), problems)
        return LoraAdapter(
            modules,
            config=self.config,
            modules_to_save=self.extra_tensors(),
            source=str(self.path),
        )


def _resolve(path: Path, allow_pickle: bool) -> tuple[Path, Path | None]:
    """(weights file, config file or None)."""
    try:
        return _resolve_unguarded(path, allow_pickle)
    except OSError as exc:  # e.g. a directory without search permission
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _pickle_refused(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path}: pickle checkpoints are refused by default; pass --allow-pickle "
        "(allow_pickle=True) to load it with torch.load(weights_only=True), or convert it to "
        "safetensors"
    )


def _resolve_unguarded(path: Path, allow_pickle: bool) -> tuple[Path, Path | None]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        cfg = path / ADAPTER_CONFIG
        for weights in (path / ADAPTER_WEIGHTS, path / ADAPTER_PICKLE):
            if weights.is_file():
                if weights.suffix == ".bin" and not allow_pickle:
                    raise _pickle_refused(weights)
                if not cfg.is_file():
                    raise CheckpointError(
                        f"{path}: {ADAPTER_CONFIG} is missing beside {weights.name}"
                    )
                return weights, cfg
        raise CheckpointError(
            f"{path}: no {ADAPTER_WEIGHTS} in this directory (not a LoRA adapter directory)"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise _pickle_refused(path)
        cfg = path.parent / ADAPTER_CONFIG
        return path, cfg if path.name == ADAPTER_PICKLE and cfg.is_file() else None
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path}: expected a PEFT adapter directory or a .safetensors file "
            f"(or {'/'.join(PICKLE_SUFFIXES)} with --allow-pickle)"
        )
    cfg = path.parent / ADAPTER_CONFIG
    if path.name == ADAPTER_WEIGHTS and cfg.is_file():
        return path, cfg
    return path, None


def _config_for(
    weights: Path, cfg_path: Path | None, meta: Mapping[str, str], alpha: float | None
) -> tuple[dict[str, Any], str, str | None]:
    """The adapter config, where alpha comes from, and a warning when alpha is assumed."""
    if cfg_path is not None or "adapter_config" in meta:
        if cfg_path is not None:
            cfg, where = read_config(cfg_path), str(cfg_path)
            provenance = cfg_path.parent / PROVENANCE
            if "coto" not in cfg and provenance.is_file():
                cfg["coto"] = read_config(provenance)
        else:
            try:
                cfg = json.loads(meta["adapter_config"])
            except (ValueError, RecursionError) as exc:
                raise CheckpointError(
                    f"{weights}: invalid adapter_config JSON in the safetensors metadata"
                ) from exc
            if not isinstance(cfg, dict):
                raise CheckpointError(f"{weights}: adapter_config metadata is not a JSON object")
            where = f"{weights} (metadata)"
        if alpha is not None or cfg.get("lora_alpha") is not None:
            return cfg, "config" if cfg_path is not None else "metadata", None
        return (
            {**cfg, "lora_alpha": PEFT_DEFAULT_ALPHA},
            f"PEFT default ({PEFT_DEFAULT_ALPHA})",
            f"{where}: no lora_alpha; using PEFT's default lora_alpha={PEFT_DEFAULT_ALPHA}",
        )
    meta_alpha = meta.get("lora_alpha", meta.get("alpha"))
    if meta_alpha is not None:
        try:
            value = float(meta_alpha)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise CheckpointError(
                f"{weights}: metadata alpha {meta_alpha!r} is not a finite number"
            )
        return {"lora_alpha": value}, "metadata", None
    if alpha is None:
        return (
            {},
            "default (alpha = rank)",
            f"{weights}: no adapter_config.json and no alpha in the metadata; assuming alpha = "
            "rank (scaling 1) for every module; pass --alpha to set it",
        )
    return {}, "--alpha", None


def _check_alpha(alpha: float | None) -> None:
    if alpha is None:
        return
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise OptionError(f"--alpha must be a number, got {alpha!r}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise OptionError(f"--alpha must be a finite positive number, got {alpha}")


def _module_problems(
    entries: dict[str, _ModuleEntry], cfg: Mapping[str, Any], weights: Path
) -> list[str]:
    problems: list[str] = []
    rp = cfg.get("rank_pattern")
    rank_pattern: Mapping[str, Any] = rp if isinstance(rp, dict) else {}
    ap = cfg.get("alpha_pattern")
    alpha_pattern: Mapping[str, Any] = ap if isinstance(ap, dict) else {}
    r = cfg.get("r")
    cfg_r = r if isinstance(r, int) and not isinstance(r, bool) else None
    for module, e in entries.items():
        if e.a_key is None:
            problems.append(f"module {module}: lora_B without lora_A")
            continue
        if e.b_key is None:
            problems.append(f"module {module}: lora_A without lora_B")
            continue
        if len(e.a_shape) in (3, 4, 5) or len(e.b_shape) in (3, 4, 5):
            raise UnsupportedAdapterError(
                f"{weights}: module {module}: factors of shape {list(e.a_shape)} / "
                f"{list(e.b_shape)} are convolution LoRA, which is not supported (only Linear)"
            )
        if len(e.a_shape) != 2 or len(e.b_shape) != 2:
            problems.append(
                f"module {module}: lora_A {list(e.a_shape)} and lora_B {list(e.b_shape)} "
                "must both be 2-D"
            )
            continue
        ra, rb = e.a_shape[0], e.b_shape[1]
        if ra == 0 or rb == 0:
            problems.append(f"module {module}: rank 0 (empty lora_A/lora_B)")
            continue
        if ra != rb:
            problems.append(
                f"module {module}: rank mismatch between lora_A ({ra} rows) and lora_B "
                f"({rb} columns)"
            )
            continue
        if e.a_shape[1] == 0 or e.b_shape[0] == 0:
            problems.append(f"module {module}: zero in_features or out_features")
            continue
        try:  # both patterns matched here, once: one that backtracks without bound is refused
            expected = pattern_value(rank_pattern, module)
            pattern_value(alpha_pattern, module)
        except CheckpointError as exc:
            problems.append(str(exc))
            return problems
        if not (isinstance(expected, int) and not isinstance(expected, bool)):
            expected = cfg_r
        if expected is not None and expected != ra:
            problems.append(
                f"module {module}: rank {ra} in the tensors but {expected} in the config"
            )
    return problems


def open_checkpoint(
    path: str | Path, *, alpha: float | None = None, allow_pickle: bool = False
) -> AdapterCheckpoint:
    """Open a PEFT LoRA directory, its ``adapter_model.safetensors``, or a bare ``.safetensors``.

    Only the header and config are read (a pickle file, allowed only with ``allow_pickle``, is
    loaded whole with ``torch.load(weights_only=True)``). ``alpha`` overrides ``lora_alpha`` and
    ``alpha_pattern``; a bare file without alpha metadata defaults to alpha = rank with a
    :class:`CotoWarning`. Every structural problem is reported in one :class:`ValidationError`;
    unsupported LoRA variants raise :class:`UnsupportedAdapterError`.
    """
    _check_alpha(alpha)
    path = Path(path)
    weights, cfg_path = _resolve(path, allow_pickle)
    tensors: dict[str, torch.Tensor] | None = None
    problems: list[str] = []
    if weights.suffix in PICKLE_SUFFIXES:
        tensors = load_pickle(weights)
        header: dict[str, TensorInfo] = {}
        for k, v in tensors.items():
            name = TORCH_DTYPE_NAMES.get(v.dtype)
            if name is None:
                problems.append(f"tensor {k}: unsupported dtype {v.dtype}")
            else:
                header[k] = TensorInfo(name, tuple(v.shape))
        meta: dict[str, str] = {}
    else:
        header, meta, problems = read_header(weights)

    cfg, alpha_source, assumption = _config_for(weights, cfg_path, meta, alpha)
    problems += check_config(cfg, str(cfg_path or weights))
    if alpha is not None:
        cfg = {**cfg, "lora_alpha": float(alpha), "alpha_pattern": {}}
        alpha_source = "--alpha"

    for key in header:
        for pattern, what in _UNSUPPORTED_KEYS:
            if pattern.search(key):
                raise UnsupportedAdapterError(f"{weights}: {what} is not supported (tensor {key})")

    entries: dict[str, _ModuleEntry] = {}
    other: list[str] = []
    for key, info in header.items():
        m = _LORA_KEY.match(key)
        if m is None:
            other.append(key)
            continue
        module = m.group("module").removeprefix(PEFT_PREFIX)
        if info.dtype not in FACTOR_DTYPES:
            problems.append(
                f"module {module}: tensor {key} has unsupported dtype {info.dtype} "
                f"(LoRA factors must be {', '.join(FACTOR_DTYPES)})"
            )
        e = entries.setdefault(module, _ModuleEntry())
        ab = m.group("ab")
        if (e.a_key if ab == "A" else e.b_key) is not None:
            first = e.a_key if ab == "A" else e.b_key
            problems.append(f"module {module}: duplicate lora_{ab} tensors ({first}, {key})")
            continue
        if ab == "A":
            e.a_key, e.a_shape = key, info.shape
        else:
            e.b_key, e.b_shape = key, info.shape
    problems += _module_problems(entries, cfg, weights)
    if not entries:
        problems.append("no LoRA tensors (expected keys like '<module>.lora_A.weight')")
    if problems:
        raise ValidationError(str(weights), problems)
    if assumption is not None:  # only for a checkpoint that opened: never beside an error
        warnings.warn(assumption, CotoWarning, stacklevel=2)

    return AdapterCheckpoint(
        path=path,
        weights_path=weights,
        config=cfg,
        module_names=list(entries),
        entries=entries,
        other_keys=other,
        alpha_source=alpha_source,
        _tensors=tensors,
    )


def load_adapter(
    path: str | Path, *, alpha: float | None = None, allow_pickle: bool = False
) -> LoraAdapter:
    """Open and fully read a checkpoint (see :func:`open_checkpoint`)."""
    return open_checkpoint(path, alpha=alpha, allow_pickle=allow_pickle).load()
