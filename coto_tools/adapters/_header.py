"""Low-level readers: a hand-parsed safetensors header and a guarded pickle loader.

The header parser checks everything the safetensors library checks before it trusts a file
(header length, JSON, dtypes, shapes against byte ranges, contiguous offsets covering the data
exactly), so a file that opens here does not fail later when tensors are read. It reads only the
first ``8 + header length`` bytes.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from coto_tools.errors import CheckpointError

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit

# safetensors dtype name -> bytes per element (every dtype the format defines)
ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
# LoRA factors must be one of these floating dtypes.
FACTOR_DTYPES = ("F16", "BF16", "F32", "F64")
TORCH_DTYPE_NAMES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.int64: "I64",
    torch.float64: "F64",
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], list[str]]:
    """Parse a safetensors header: ``({key: TensorInfo}, metadata, problems)``.

    Raises :class:`CheckpointError` when the file cannot be parsed at all; per-tensor problems
    (unknown dtype, bad offsets, shape/byte disagreement) are returned so the caller can report
    them together with everything else it finds.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(raw, "little")
            if n < 2 or n > size - 8 or n > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: corrupt safetensors header length {n} (file has {size} bytes)"
                )
            header_bytes = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(header_bytes) != n:
        raise CheckpointError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header (invalid JSON)") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(
            f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)"
        )
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for key, info in header.items():
        if not isinstance(info, dict):
            problems.append(f"tensor {key}: malformed header entry (not an object)")
            continue
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (
            not isinstance(dtype, str)
            or not isinstance(shape, list)
            or not all(_is_int(s) and s >= 0 for s in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(x) for x in offsets)
        ):
            problems.append(
                f"tensor {key}: malformed header entry (need dtype, a shape of non-negative "
                "integers and two integer data_offsets)"
            )
            continue
        begin, end = offsets
        if begin < 0 or end < begin or end > data_len:
            problems.append(
                f"tensor {key}: data offsets [{begin}, {end}] outside the data ({data_len} bytes)"
            )
            continue
        spans.append((begin, end, key))
        if dtype not in ITEMSIZE:
            problems.append(f"tensor {key}: unknown dtype {dtype!r}")
            continue
        if math.prod(shape) * ITEMSIZE[dtype] != end - begin:
            problems.append(
                f"tensor {key}: shape {list(shape)} of {dtype} does not match its "
                f"{end - begin} bytes"
            )
            continue
        out[key] = TensorInfo(dtype, tuple(shape))
    if not problems:
        # Like the safetensors library: tensors tile the data section without gaps or overlaps.
        pos = 0
        for begin, end, key in sorted(spans):
            if begin != pos:
                problems.append(f"tensor {key}: data offsets start at {begin}, expected {pos}")
                break
            pos = end
        else:
            if pos != data_len:
                problems.append(
                    f"data section has {data_len} bytes but the tensors cover {pos} "
                    "(truncated or padded file)"
                )
    return out, {str(k): v for k, v in meta.items()}, problems


def load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, no code runs."""
    # torch warns while it reads some bad files (e.g. "Detected pickle protocol 222" for bytes
    # that start like a pickle): the warnings are held back, dropped when the load fails (the
    # error says it all, on one line) and passed on when it succeeds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... for bad files
            failure: Exception | None = exc
        else:
            failure = None
    if failure is not None:
        msg = " ".join(str(failure).split())[:200]
        raise CheckpointError(
            f"{path}: cannot load with torch.load(weights_only=True): "
            f"{type(failure).__name__}: {msg}"
        ) from failure
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return dict(obj)
