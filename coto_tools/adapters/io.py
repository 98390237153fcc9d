"""Read and write LoRA checkpoints: PEFT directories and bare ``.safetensors`` files.

Opening a checkpoint reads only the safetensors header and the config; tensors are read one
module at a time (:meth:`AdapterCheckpoint.module`), so adapters larger than memory allows at
once can be streamed. Validation collects every problem and raises once.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from coto_tools.adapters.atomic import atomic_path
from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.errors import CheckpointError, UnsupportedAdapterError, ValidationError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
SUPPORTED_DTYPES = {"F16", "BF16", "F32", "F64"}
_TORCH_DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}

# ``<module>.lora_A[.<adapter>].weight``
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_UNSUPPORTED_KEYS = (
    (re.compile(r"\.lora_magnitude_vector"), "DoRA (lora_magnitude_vector)"),
    (re.compile(r"\.lora_embedding_[AB]"), "embedding LoRA (lora_embedding_A/B)"),
    (re.compile(r"\.lora_[AB](?:\.[^.]+)?\.bias$"), "lora_bias"),
)


class CotoWarning(UserWarning):
    """A warning about an input that coto-tools accepted with an assumption."""


@dataclass
class _ModuleEntry:
    a_key: str | None = None
    b_key: str | None = None
    a_shape: tuple[int, ...] | None = None
    b_shape: tuple[int, ...] | None = None


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
    def rank_of(self, name: str) -> int:
        e = self.entries[name]
        assert e.a_shape is not None  # validated at open
        return int(e.a_shape[0])

    def alpha_of(self, name: str) -> float:
        pattern = _pattern_value(self.config.get("alpha_pattern") or {}, name)
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
        e = self.entries[name]
        assert e.a_shape is not None and e.b_shape is not None
        return e.a_shape, e.b_shape

    # -- tensor access ------------------------------------------------------------------
    def _get(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        with safe_open(str(self.weights_path), framework="pt") as f:
            return f.get_tensor(key)

    def module(self, name: str, *, check_finite: bool = True) -> LoraModule:
        """Read one module's factors from disk."""
        e = self.entries[name]
        assert e.a_key is not None and e.b_key is not None
        try:
            A = self._get(e.a_key)
            B = self._get(e.b_key)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types on corrupt data
            raise CheckpointError(f"{self.weights_path}: cannot read module {name}: {exc}") from exc
        if check_finite:
            bad = [ab for ab, t in (("A", A), ("B", B)) if not bool(torch.isfinite(t).all())]
            if bad:
                raise ValidationError(
                    str(self.weights_path), [f"module {name}: non-finite values in {'/'.join(bad)}"]
                )
        return LoraModule(A=A, B=B, alpha=self.alpha_of(name), use_rslora=self.use_rslora)

    def iter_modules(self) -> Iterator[tuple[str, LoraModule]]:
        for name in self.module_names:
            yield name, self.module(name)

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {k: self._get(k) for k in self.other_keys}

    def load(self) -> LoraAdapter:
        """Read every module (all problems reported at once)."""
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


def _pattern_value(patterns: Mapping[str, Any], name: str) -> Any:
    """PEFT's rule: a pattern applies when ``name`` matches ``(.*\\.)?(pattern)$``."""
    for pattern, value in patterns.items():
        if pattern == name or re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _check_config(cfg: dict[str, Any], source: str) -> list[str]:
    problems: list[str] = []
    peft_type = cfg.get("peft_type")
    if peft_type is not None and str(peft_type).upper() != "LORA":
        raise UnsupportedAdapterError(f"{source}: peft_type {peft_type!r} is not LORA")
    if cfg.get("use_dora"):
        raise UnsupportedAdapterError(f"{source}: DoRA adapters (use_dora=true) are not supported")
    if cfg.get("lora_bias"):
        raise UnsupportedAdapterError(f"{source}: lora_bias=true is not supported")
    typed = {
        "r": (int,),
        "lora_alpha": (int, float),
        "use_rslora": (bool,),
        "fan_in_fan_out": (bool,),
        "rank_pattern": (dict,),
        "alpha_pattern": (dict,),
    }
    for key, types in typed.items():
        if key in cfg and cfg[key] is not None:
            val = cfg[key]
            if isinstance(val, bool) and bool not in types:
                problems.append(f"config field {key!r} must be {types[0].__name__}, got bool")
            elif not isinstance(val, types):
                problems.append(f"config field {key!r} must be {types[0].__name__}, got {type(val).__name__}")
    if isinstance(cfg.get("r"), int) and not isinstance(cfg.get("r"), bool) and cfg["r"] <= 0:
        problems.append(f"config field 'r' must be positive, got {cfg['r']}")
    alpha = cfg.get("lora_alpha")
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and not math.isfinite(alpha):
        problems.append(f"config field 'lora_alpha' must be finite, got {alpha}")
    tm = cfg.get("target_modules")
    if tm is not None and not isinstance(tm, (list, str)):
        problems.append(f"config field 'target_modules' must be a list or string, got {type(tm).__name__}")
    return problems


def _resolve(path: Path, allow_pickle: bool) -> tuple[Path, Path | None]:
    """(weights file, config file or None)."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        st = path / ADAPTER_WEIGHTS
        if st.is_file():
            cfg = path / ADAPTER_CONFIG
            if not cfg.is_file():
                raise CheckpointError(f"{path}: {ADAPTER_CONFIG} is missing beside {ADAPTER_WEIGHTS}")
            return st, cfg
        binf = path / ADAPTER_PICKLE
        if binf.is_file():
            if not allow_pickle:
                raise CheckpointError(
                    f"{binf}: pickle checkpoints are refused by default; pass --allow-pickle to load it "
                    "with torch.load(weights_only=True), or convert it to safetensors"
                )
            cfg = path / ADAPTER_CONFIG
            if not cfg.is_file():
                raise CheckpointError(f"{path}: {ADAPTER_CONFIG} is missing beside {ADAPTER_PICKLE}")
            return binf, cfg
        raise CheckpointError(f"{path}: no {ADAPTER_WEIGHTS} in this directory (not a LoRA adapter)")
    if path.suffix == ".bin":
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: pickle checkpoints are refused by default; pass --allow-pickle to load it "
                "with torch.load(weights_only=True)"
            )
        cfg = path.parent / ADAPTER_CONFIG
        return path, cfg if cfg.is_file() else None
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: expected a PEFT adapter directory or a .safetensors file")
    cfg = path.parent / ADAPTER_CONFIG
    if path.name == ADAPTER_WEIGHTS and cfg.is_file():
        return path, cfg
    return path, None


def _read_header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """Parse a safetensors header by hand: {key: (dtype, shape)}, metadata. Reads no tensor data."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(raw, "little")
            if n <= 0 or n > size - 8 or n > 100_000_000:
                raise CheckpointError(f"{path}: corrupt safetensors header length {n} (file has {size} bytes)")
            header_bytes = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header (invalid JSON)") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    data_len = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    problems: list[str] = []
    for key, info in header.items():
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"tensor {key}: malformed header entry")
            continue
        if begin < 0 or end < begin or end > data_len:
            problems.append(f"tensor {key}: data offsets [{begin}, {end}] outside the data ({data_len} bytes)")
            continue
        if dtype not in SUPPORTED_DTYPES:
            problems.append(f"tensor {key}: unsupported dtype {dtype} (supported: F16, BF16, F32, F64)")
            continue
        itemsize = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}[dtype]
        if math.prod(shape) * itemsize != end - begin:
            problems.append(f"tensor {key}: shape {list(shape)} does not match its {end - begin} bytes")
            continue
        out[key] = (dtype, shape)
    if problems:
        raise ValidationError(str(path), problems)
    return out, {str(k): str(v) for k, v in meta.items()}


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load with torch.load(weights_only=True): {exc}") from exc
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return {str(k): v for k, v in obj.items()}


def open_checkpoint(
    path: str | Path, *, alpha: float | None = None, allow_pickle: bool = False
) -> AdapterCheckpoint:
    """Open a PEFT LoRA directory, its ``adapter_model.safetensors``, or a bare ``.safetensors``.

    Only the header and config are read. ``alpha`` overrides ``lora_alpha`` (bare files without
    alpha metadata default to alpha = rank, with a :class:`CotoWarning`).
    """
    path = Path(path)
    weights, cfg_path = _resolve(path, allow_pickle)
    tensors: dict[str, torch.Tensor] | None = None
    if weights.suffix == ".bin":
        tensors = _load_pickle(weights)
        header = {
            k: (_TORCH_DTYPE_NAMES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in tensors.items()
        }
        meta: dict[str, str] = {}
        bad = [f"tensor {k}: unsupported dtype {d}" for k, (d, _) in header.items() if d not in SUPPORTED_DTYPES]
        if bad:
            raise ValidationError(str(weights), bad)
    else:
        header, meta = _read_header(weights)

    source = str(cfg_path) if cfg_path is not None else str(weights)
    alpha_source = "config"
    if cfg_path is not None:
        cfg = _read_config(cfg_path)
    elif "adapter_config" in meta:
        try:
            cfg = json.loads(meta["adapter_config"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{weights}: invalid adapter_config in safetensors metadata") from exc
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{weights}: adapter_config metadata is not a JSON object")
        alpha_source = "metadata"
    else:
        cfg = {}
        meta_alpha = meta.get("lora_alpha", meta.get("alpha"))
        if meta_alpha is not None:
            try:
                cfg["lora_alpha"] = float(meta_alpha)
            except ValueError as exc:
                raise CheckpointError(f"{weights}: metadata alpha {meta_alpha!r} is not a number") from exc
            alpha_source = "metadata"
        elif alpha is None:
            alpha_source = "default (alpha = rank)"
            warnings.warn(
                f"{weights}: no adapter_config.json and no alpha in the metadata; assuming alpha = rank "
                "(scaling 1) for every module; pass --alpha to set it",
                CotoWarning,
                stacklevel=2,
            )
    problems = _check_config(cfg, source)
    if alpha is not None:
        if not math.isfinite(alpha):
            raise CheckpointError(f"alpha must be finite, got {alpha}")
        cfg = {**cfg, "lora_alpha": float(alpha), "alpha_pattern": {}}
        alpha_source = "--alpha"

    for key in header:
        for pattern, what in _UNSUPPORTED_KEYS:
            if pattern.search(key):
                raise UnsupportedAdapterError(f"{weights}: {what} is not supported (tensor {key})")

    entries: dict[str, _ModuleEntry] = {}
    other: list[str] = []
    for key, (_dtype, shape) in header.items():
        m = _LORA_KEY.match(key)
        if m is None:
            other.append(key)
            continue
        module = m.group("module")
        if module.startswith(PEFT_PREFIX):
            module = module[len(PEFT_PREFIX) :]
        e = entries.setdefault(module, _ModuleEntry())
        if m.group("ab") == "A":
            if e.a_key is not None:
                problems.append(f"module {module}: duplicate lora_A tensors ({e.a_key}, {key})")
            e.a_key, e.a_shape = key, shape
        else:
            if e.b_key is not None:
                problems.append(f"module {module}: duplicate lora_B tensors ({e.b_key}, {key})")
            e.b_key, e.b_shape = key, shape

    rank_pattern = cfg.get("rank_pattern") if isinstance(cfg.get("rank_pattern"), dict) else {}
    cfg_r = cfg.get("r") if isinstance(cfg.get("r"), int) else None
    for module, e in entries.items():
        if e.a_key is None:
            problems.append(f"module {module}: lora_B without lora_A")
            continue
        if e.b_key is None:
            problems.append(f"module {module}: lora_A without lora_B")
            continue
        assert e.a_shape is not None and e.b_shape is not None
        if len(e.a_shape) != 2 or len(e.b_shape) != 2:
            raise UnsupportedAdapterError(
                f"{weights}: module {module}: factors of shape {list(e.a_shape)} / {list(e.b_shape)} "
                "(convolution LoRA is not supported; only Linear LoRA)"
            )
        ra, rb = e.a_shape[0], e.b_shape[1]
        if ra == 0 or rb == 0:
            problems.append(f"module {module}: rank 0")
            continue
        if ra != rb:
            problems.append(f"module {module}: rank mismatch between lora_A ({ra}) and lora_B ({rb})")
            continue
        expected = _pattern_value(rank_pattern or {}, module)
        if expected is None:
            expected = cfg_r
        if expected is not None and int(expected) != ra:
            problems.append(f"module {module}: rank {ra} in the tensors but {expected} in the config")
    if not entries:
        problems.append("no LoRA tensors (expected keys like '<module>.lora_A.weight')")
    if problems:
        raise ValidationError(str(weights), problems)

    names = list(entries)
    return AdapterCheckpoint(
        path=path,
        weights_path=weights,
        config=cfg,
        module_names=names,
        entries=entries,
        other_keys=other,
        alpha_source=alpha_source,
        _tensors=tensors,
    )


def load_adapter(path: str | Path, *, alpha: float | None = None, allow_pickle: bool = False) -> LoraAdapter:
    """Open and fully read a checkpoint (see :func:`open_checkpoint`)."""
    return open_checkpoint(path, alpha=alpha, allow_pickle=allow_pickle).load()


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


def peft_config(
    adapter: LoraAdapter,
    *,
    base_model: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``adapter_config.json`` that PEFT loads, with rank/alpha patterns where modules differ."""
    mods = adapter.modules
    if not mods:
        raise CheckpointError("cannot write an adapter with no modules")
    rslora = {m.use_rslora for m in mods.values()}
    if len(rslora) > 1:
        raise CheckpointError("cannot write an adapter mixing rsLoRA and plain LoRA scalings")
    ranks = Counter(m.rank for m in mods.values())
    r = ranks.most_common(1)[0][0]
    alphas = Counter(float(m.alpha) for m in mods.values())
    alpha = alphas.most_common(1)[0][0]
    rank_pattern = {n: m.rank for n, m in mods.items() if m.rank != r}
    alpha_pattern = {n: _num(m.alpha) for n, m in mods.items() if float(m.alpha) != alpha}
    src = dict(adapter.config)
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": src.get("task_type"),
        "base_model_name_or_path": base_model if base_model is not None else src.get("base_model_name_or_path"),
        "revision": src.get("revision"),
        "inference_mode": True,
        "r": r,
        "lora_alpha": _num(alpha),
        "lora_dropout": float(src.get("lora_dropout") or 0.0),
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in mods}),
        "fan_in_fan_out": bool(src.get("fan_in_fan_out", False)),
        "bias": "none",
        "use_rslora": rslora.pop(),
        "use_dora": False,
        "modules_to_save": src.get("modules_to_save"),
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
    }
    # Exact module names: PEFT matches target_modules against name suffixes; listing the full
    # names keeps modules of the same kind that the adapter does not hold untouched.
    cfg["target_modules"] = sorted(mods)
    if extra:
        cfg["coto"] = dict(extra)
    return cfg


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def state_dict(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """PEFT's saved key names: ``base_model.model.<module>.lora_A.weight``."""
    out: dict[str, torch.Tensor] = {}
    for name, m in adapter.modules.items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.A.contiguous()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.B.contiguous()
    for key, t in adapter.modules_to_save.items():
        out[key] = t.contiguous()
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

    Atomic: written to a temporary sibling, then renamed. ``extra_config`` is recorded under the
    config's ``coto`` key; ``extra_files`` (name -> text) are written into a directory output.
    """
    from safetensors.torch import save_file

    path = Path(path)
    cfg = peft_config(adapter, base_model=base_model, extra=extra_config)
    tensors = state_dict(adapter)
    if path.suffix == ".safetensors":
        with atomic_path(path, force=force) as tmp:
            save_file(tensors, str(tmp), metadata={"adapter_config": json.dumps(cfg), "format": "pt"})
    else:
        with atomic_path(path, force=force, directory=True) as tmp:
            save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
            for fname, text in (extra_files or {}).items():
                (tmp / fname).write_text(text)
    return path
