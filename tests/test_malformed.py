"""A corpus of malformed adapters, generated here, each refused cleanly.

Every case goes through ``coto-tools inspect`` (exit code 2, exactly one line on stderr naming
the file or module and the problem, no traceback, nothing written) and through the Python API
(a :class:`CotoError` subclass whose message says the same). A bounded fuzz test then feeds
random and mutated bytes to ``open_checkpoint``/``load``: only ``CotoError`` may escape.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import stat
import struct
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save, save_file

from coto_tools.adapters import load_adapter, open_checkpoint
from coto_tools.cli import main
from coto_tools.errors import CotoError

M = "model.layers.0.self_attn.q_proj"
M2 = "model.layers.0.self_attn.v_proj"
P = "base_model.model."


def factors(r: int = 4, rb: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, 6, generator=g), torch.randn(5, r if rb is None else rb, generator=g)


def lora_sd(**over: torch.Tensor) -> dict[str, torch.Tensor]:
    """A valid two-module state dict (PEFT key names) with entries replaced or added."""
    a, b = factors()
    c, d = factors(seed=1)
    sd = {f"{P}{M}.lora_A.weight": a, f"{P}{M}.lora_B.weight": b}
    sd |= {f"{P}{M2}.lora_A.weight": c, f"{P}{M2}.lora_B.weight": d}
    sd.update(over)
    return sd


ALPHA_META = {"lora_alpha": "8"}


def bare(name: str, sd: dict[str, torch.Tensor] | None = None, meta: dict | None = None):
    def build(root: Path) -> Path:
        path = root / name
        save_file(sd if sd is not None else lora_sd(), str(path), metadata=meta or ALPHA_META)
        return path

    return build


def valid_bytes() -> bytes:
    return save(lora_sd(), metadata=ALPHA_META)


def raw_file(name: str, data: bytes):
    def build(root: Path) -> Path:
        path = root / name
        path.write_bytes(data)
        return path

    return build


def crafted(header: dict, data: bytes = b"", *, header_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    return struct.pack("<Q", n) + raw + data


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def with_header(mutate: Callable[[dict], None]) -> bytes:
    """The valid file with its JSON header edited (data section unchanged)."""
    data = valid_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    mutate(header)
    return crafted(header, data[8 + n :])


def peft_dir(
    name: str, cfg: dict | None = None, sd: dict | None = None, *, cfg_text: bytes | None = None
):
    def build(root: Path) -> Path:
        d = root / name
        d.mkdir()
        save_file(sd if sd is not None else lora_sd(), str(d / "adapter_model.safetensors"))
        if cfg_text is not None:
            (d / "adapter_config.json").write_bytes(cfg_text)
        elif cfg is not False:
            full = {
                "peft_type": "LORA",
                "r": 4,
                "lora_alpha": 8,
                "target_modules": ["q_proj", "v_proj"],
            }
            full.update(cfg or {})
            (d / "adapter_config.json").write_text(json.dumps(full))
        return d

    return build


class Evil:
    """Unpickling this would create the marker file (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def evil_bin(name: str, *, zip_format: bool):
    def build(root: Path) -> Path:
        path = root / name
        marker = root.parent / f"{root.name}-PWNED"
        payload = {f"{P}{M}.lora_A.weight": Evil(marker)}
        if zip_format:
            torch.save(payload, path)
        else:
            with path.open("wb") as fh:
                pickle.dump(payload, fh, protocol=2)
        return path

    return build


def torch_bin(name: str, obj: object):
    def build(root: Path) -> Path:
        path = root / name
        torch.save(obj, path)
        return path

    return build


def bin_dir(root: Path) -> Path:
    d = root / "bindir"
    d.mkdir()
    torch.save(lora_sd(), d / "adapter_model.bin")
    (d / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    return d


def unreadable_file(root: Path) -> Path:
    path = bare("locked.safetensors")(root)
    path.chmod(0)
    return path


def unreadable_dir(root: Path) -> Path:
    d = peft_dir("lockeddir")(root)
    d.chmod(0)
    return d


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], Path]
    needles: tuple[str, ...]  # substrings of the one error line (file or module + problem)
    args: tuple[str, ...] = ()
    api: dict = field(default_factory=dict)
    needs_permissions: bool = False


def nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[0, 0] = float("nan")
    return t


def inf(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[-1, -1] = float("-inf")
    return t


A0, B0 = factors()
PICKLE = ("--allow-pickle",)
ALLOW = {"allow_pickle": True}

CASES = [
    # -- truncated or corrupt safetensors -------------------------------------------------
    Case(
        "empty-file",
        raw_file("empty.safetensors", b""),
        ("empty.safetensors", "shorter than 8 bytes"),
    ),
    Case(
        "five-bytes",
        raw_file("five.safetensors", b"\x01\x02\x03\x04\x05"),
        ("five.safetensors", "shorter than 8"),
    ),
    Case(
        "header-len-past-end",
        raw_file("long.safetensors", valid_bytes()[:8] + b"{}"),
        ("long.safetensors", "header length"),
    ),
    Case(
        "header-len-zero",
        raw_file("zero.safetensors", struct.pack("<Q", 0) + b"{}"),
        ("zero.safetensors", "header length 0"),
    ),
    Case(
        "header-len-huge",
        raw_file("huge.safetensors", struct.pack("<Q", 2**63) + b"{}"),
        ("huge.safetensors", "header length"),
    ),
    Case(
        "header-not-json",
        raw_file("garbage.safetensors", struct.pack("<Q", 6) + b"{abc!!"),
        ("garbage.safetensors", "invalid JSON"),
    ),
    Case(
        "header-not-utf8",
        raw_file("latin.safetensors", struct.pack("<Q", 4) + b"{\xff\xfe}"),
        ("latin.safetensors", "invalid JSON"),
    ),
    Case(
        "header-is-list",
        raw_file("list.safetensors", crafted([1, 2])),
        ("list.safetensors", "not a JSON object"),
    ),  # type: ignore[arg-type]
    Case(
        "truncated-data",
        raw_file("cut.safetensors", valid_bytes()[:-10]),
        ("cut.safetensors", "outside the data"),
    ),
    Case(
        "trailing-bytes",
        raw_file("padded.safetensors", valid_bytes() + b"\0" * 16),
        ("padded.safetensors", "truncated or padded"),
    ),
    Case(
        "offsets-past-end",
        raw_file(
            "off.safetensors", crafted({"m.lora_A.weight": entry("F32", [1, 1], 0, 400)}, b"\0" * 4)
        ),
        ("off.safetensors", "m.lora_A.weight", "outside the data"),
    ),
    Case(
        "offsets-reversed",
        raw_file(
            "rev.safetensors", crafted({"m.lora_A.weight": entry("F32", [1, 1], 4, 0)}, b"\0" * 4)
        ),
        ("rev.safetensors", "outside the data"),
    ),
    Case(
        "offsets-overlap",
        raw_file(
            "overlap.safetensors",
            crafted(
                {
                    "m.lora_A.weight": entry("F32", [1, 1], 0, 4),
                    "m.lora_B.weight": entry("F32", [1, 1], 0, 4),
                },
                b"\0" * 8,
            ),
        ),
        ("overlap.safetensors", "expected 4"),
    ),
    Case(
        "unknown-dtype",
        raw_file(
            "dtype.safetensors",
            with_header(lambda h: h[f"{P}{M}.lora_A.weight"].update(dtype="F7")),
        ),
        ("dtype.safetensors", "unknown dtype 'F7'"),
    ),
    Case(
        "int-factor-dtype",
        raw_file(
            "int.safetensors",
            save(
                lora_sd(**{f"{P}{M}.lora_A.weight": torch.ones(4, 6, dtype=torch.int32)}),
                metadata=ALPHA_META,
            ),
        ),
        ("int.safetensors", M, "unsupported dtype I32"),
    ),
    Case(
        "shape-vs-bytes",
        raw_file(
            "shape.safetensors",
            with_header(lambda h: h[f"{P}{M}.lora_A.weight"].update(shape=[4, 7])),
        ),
        ("shape.safetensors", "does not match"),
    ),
    Case(
        "entry-missing-offsets",
        raw_file(
            "entry.safetensors",
            with_header(lambda h: h[f"{P}{M}.lora_B.weight"].pop("data_offsets")),
        ),
        ("entry.safetensors", "malformed header entry"),
    ),
    Case(
        "negative-shape",
        raw_file(
            "neg.safetensors",
            with_header(lambda h: h[f"{P}{M}.lora_A.weight"].update(shape=[-4, -6])),
        ),
        ("neg.safetensors", "malformed header entry"),
    ),
    Case(
        "metadata-not-strings",
        raw_file(
            "meta.safetensors", with_header(lambda h: h.update(__metadata__={"lora_alpha": 8}))
        ),
        ("meta.safetensors", "__metadata__"),
    ),
    Case(
        "metadata-alpha-text",
        bare("alpha.safetensors", meta={"lora_alpha": "eight"}),
        ("alpha.safetensors", "'eight' is not a finite number"),
    ),
    Case(
        "metadata-config-bad-json",
        bare("mcfg.safetensors", meta={"adapter_config": "{r: 4"}),
        ("mcfg.safetensors", "invalid adapter_config JSON"),
    ),
    # -- adapter_config.json ----------------------------------------------------------------
    Case(
        "config-missing", peft_dir("nocfg", cfg=False), ("nocfg", "adapter_config.json is missing")
    ),
    Case(
        "config-invalid-json",
        peft_dir("badjson", cfg_text=b'{"r": 4,'),
        ("badjson/adapter_config.json", "invalid JSON"),
    ),
    Case(
        "config-not-utf8",
        peft_dir("binary", cfg_text=b"\xff\xfe\x00{"),
        ("binary/adapter_config.json", "not UTF-8"),
    ),
    Case(
        "config-is-list",
        peft_dir("listcfg", cfg_text=b"[4, 8]"),
        ("listcfg/adapter_config.json", "expected a JSON object"),
    ),
    Case(
        "config-r-string",
        peft_dir("rstr", {"r": "4"}),
        ("rstr", "'r' must be a positive integer, got '4'"),
    ),
    Case(
        "config-alpha-string",
        peft_dir("astr", {"lora_alpha": "8"}),
        ("astr", "'lora_alpha' must be a finite number"),
    ),
    Case(
        "config-rslora-string",
        peft_dir("rs", {"use_rslora": "yes"}),
        ("rs", "'use_rslora' must be true or false"),
    ),
    Case(
        "config-rank-pattern-list",
        peft_dir("rpl", {"rank_pattern": [4]}),
        ("rpl", "'rank_pattern' must be an object"),
    ),
    Case(
        "config-rank-pattern-value",
        peft_dir("rpv", {"rank_pattern": {"q_proj": "four"}}),
        ("rpv", "'q_proj' maps to 'four'"),
    ),
    Case(
        "config-pattern-bad-regex",
        peft_dir("rpx", {"alpha_pattern": {"q_proj[": 3}}),
        ("rpx", "not a valid pattern"),
    ),
    Case(
        "config-target-modules-int",
        peft_dir("tm", {"target_modules": 7}),
        ("tm", "'target_modules' must be a list of strings"),
    ),
    Case(
        "config-peft-type",
        peft_dir("ia3", {"peft_type": "IA3"}),
        ("ia3", "peft_type 'IA3' is not supported"),
    ),
    # -- LoRA structure ---------------------------------------------------------------------
    Case(
        "a-without-b",
        bare("noB.safetensors", {f"{M}.lora_A.weight": A0}),
        ("noB.safetensors", M, "lora_A without lora_B"),
    ),
    Case(
        "b-without-a",
        bare("noA.safetensors", lora_sd() | {f"{P}x.lora_B.weight": B0}),
        ("noA.safetensors", "module x: lora_B without lora_A"),
    ),
    Case(
        "rank-a-vs-b",
        bare("ab.safetensors", lora_sd(**{f"{P}{M}.lora_B.weight": factors(rb=3)[1]})),
        ("ab.safetensors", M, "rank mismatch between lora_A (4 rows) and lora_B (3 columns)"),
    ),
    Case(
        "rank-vs-config",
        peft_dir("rcfg", {"r": 8}),
        ("rcfg", M, "rank 4 in the tensors but 8 in the config"),
    ),
    Case(
        "rank-vs-pattern",
        peft_dir("rpat", {"rank_pattern": {"v_proj": 2}}),
        ("rpat", M2, "rank 4 in the tensors but 2"),
    ),
    Case(
        "all-problems-at-once",
        bare(
            "many.safetensors",
            {
                f"{M}.lora_A.weight": A0,
                f"{M2}.lora_B.weight": B0,
                f"{P}w.lora_A.weight": A0.clone(),
                f"{P}w.lora_B.weight": factors(rb=2)[1],
            },
        ),
        (
            "3 problem(s)",
            "lora_A without lora_B",
            "lora_B without lora_A",
            "module w: rank mismatch",
        ),
    ),
    Case(
        "nan-in-A",
        bare("nan.safetensors", lora_sd(**{f"{P}{M}.lora_A.weight": nan(A0)})),
        ("nan.safetensors", M, "non-finite values (NaN/Inf) in lora_A"),
    ),
    Case(
        "inf-in-B-two-modules",
        bare(
            "inf.safetensors",
            lora_sd(**{f"{P}{M}.lora_B.weight": inf(B0), f"{P}{M2}.lora_B.weight": inf(B0)}),
        ),
        ("inf.safetensors", "2 problem(s)", M, M2, "non-finite"),
    ),
    Case(
        "no-lora-tensors",
        bare("empty-adapter.safetensors", {f"{P}classifier.weight": torch.ones(2, 2)}),
        ("empty-adapter.safetensors", "no LoRA tensors"),
    ),
    Case(
        "no-tensors-at-all",
        bare("nothing.safetensors", {}),
        ("nothing.safetensors", "no LoRA tensors"),
    ),
    Case(
        "rank-zero",
        bare(
            "r0.safetensors",
            {f"{M}.lora_A.weight": torch.ones(0, 6), f"{M}.lora_B.weight": torch.ones(5, 0)},
        ),
        ("r0.safetensors", M, "rank 0"),
    ),
    Case(
        "duplicate-adapter-name",
        bare("dup.safetensors", lora_sd() | {f"{P}{M}.lora_A.default.weight": A0}),
        ("dup.safetensors", M, "duplicate lora_A"),
    ),
    Case(
        "duplicate-prefix",
        bare("dup2.safetensors", lora_sd() | {f"{M2}.lora_B.weight": B0}),
        ("dup2.safetensors", M2, "duplicate lora_B"),
    ),
    Case(
        "one-dim-factor",
        bare("vec.safetensors", lora_sd(**{f"{P}{M}.lora_A.weight": torch.ones(4)})),
        ("vec.safetensors", M, "must both be 2-D"),
    ),
    # -- not plain LoRA ---------------------------------------------------------------------
    Case("dora-config", peft_dir("dora", {"use_dora": True}), ("dora", "DoRA")),
    Case(
        "dora-tensors",
        bare("dora.safetensors", lora_sd() | {f"{P}{M}.lora_magnitude_vector": torch.ones(5)}),
        ("dora.safetensors", "DoRA", "lora_magnitude_vector"),
    ),
    Case("lora-bias-config", peft_dir("lbias", {"lora_bias": True}), ("lbias", "lora_bias")),
    Case(
        "lora-bias-tensor",
        bare("lbias.safetensors", lora_sd() | {f"{P}{M}.lora_B.bias": torch.ones(5)}),
        ("lbias.safetensors", "lora_bias", f"{M}.lora_B.bias"),
    ),
    Case(
        "embedding-lora",
        bare(
            "emb.safetensors",
            {
                f"{P}model.embed_tokens.lora_embedding_A": torch.ones(4, 10),
                f"{P}model.embed_tokens.lora_embedding_B": torch.ones(6, 4),
            },
        ),
        ("emb.safetensors", "embedding LoRA"),
    ),
    Case(
        "conv-lora-4d",
        bare(
            "conv.safetensors",
            {
                f"{P}conv1.lora_A.weight": torch.ones(4, 3, 3, 3),
                f"{P}conv1.lora_B.weight": torch.ones(8, 4, 1, 1),
            },
        ),
        ("conv.safetensors", "conv1", "convolution LoRA"),
    ),
    Case("bias-all", peft_dir("biasall", {"bias": "all"}), ("biasall", "bias='all'")),
    Case(
        "alora", peft_dir("alora", {"alora_invocation_tokens": [1, 2]}), ("alora", "activated LoRA")
    ),
    # -- pickle -----------------------------------------------------------------------------
    Case(
        "bin-refused",
        torch_bin("adapter.bin", lora_sd()),
        ("adapter.bin", "pickle checkpoints are refused", "--allow-pickle"),
    ),
    Case("bin-dir-refused", bin_dir, ("bindir/adapter_model.bin", "refused")),
    Case(
        "bin-evil-zip",
        evil_bin("evil.bin", zip_format=True),
        ("evil.bin", "weights_only=True"),
        PICKLE,
        ALLOW,
    ),
    Case(
        "bin-evil-legacy",
        evil_bin("evil_legacy.bin", zip_format=False),
        ("evil_legacy.bin", "weights_only=True"),
        PICKLE,
        ALLOW,
    ),
    Case("bin-evil-refused", evil_bin("evil2.pt", zip_format=True), ("evil2.pt", "refused")),
    Case(
        "bin-not-a-dict",
        torch_bin("list.bin", [torch.ones(2)]),
        ("list.bin", "mapping of tensor names to tensors"),
        PICKLE,
        ALLOW,
    ),
    Case(
        "bin-garbage",
        raw_file("junk.bin", random.Random(0).randbytes(64)),
        ("junk.bin", "cannot load"),
        PICKLE,
        ALLOW,
    ),
    Case(
        # starts like a pickle of protocol 222: torch warns before it fails; the CLI still
        # prints one line (one in ~128 random files starts with 0x80 and hit this in CI)
        "bin-garbage-pickle-protocol",
        raw_file("proto.bin", b"\x80\xde" + random.Random(1).randbytes(62)),
        ("proto.bin", "cannot load"),
        PICKLE,
        ALLOW,
    ),
    Case(
        "bin-int-tensors",
        torch_bin(
            "ints.bin",
            {
                f"{M}.lora_A.weight": torch.ones(4, 6, dtype=torch.int64),
                f"{M}.lora_B.weight": torch.ones(5, 4),
            },
        ),
        ("ints.bin", M, "unsupported dtype I64"),
        PICKLE,
        ALLOW,
    ),
    # -- paths ------------------------------------------------------------------------------
    Case("missing-path", lambda root: root / "nope", ("nope", "no such file or directory")),
    Case(
        "missing-weights-in-dir",
        lambda root: root / "d" / "adapter_model.safetensors",
        ("adapter_model.safetensors", "no such file"),
    ),
    Case(
        "dir-without-adapter",
        lambda root: (root / "notanadapter").mkdir() or root / "notanadapter",
        ("notanadapter", "not a LoRA adapter directory"),
    ),
    Case(
        "wrong-suffix",
        raw_file("weights.txt", b"hello"),
        ("weights.txt", "expected a PEFT adapter directory"),
    ),
    Case("unreadable-file", unreadable_file, ("locked.safetensors", "cannot read")),
    Case("unreadable-dir", unreadable_dir, ("lockeddir", "cannot read"), needs_permissions=True),
    # -- --alpha --------------------------------------------------------------------------
    Case(
        "alpha-nan",
        bare("a1.safetensors"),
        ("--alpha", "nan"),
        ("--alpha", "nan"),
        {"alpha": float("nan")},
    ),
    Case(
        "alpha-inf",
        bare("a2.safetensors"),
        ("--alpha", "inf"),
        ("--alpha", "inf"),
        {"alpha": float("inf")},
    ),
    Case(
        "alpha-negative",
        bare("a3.safetensors"),
        ("--alpha", "-2"),
        ("--alpha", "-2"),
        {"alpha": -2.0},
    ),
    Case("alpha-zero", bare("a4.safetensors"), ("--alpha", "0"), ("--alpha", "0"), {"alpha": 0.0}),
    Case(
        "alpha-text",
        bare("a5.safetensors"),
        ("--alpha", "valid number"),
        ("--alpha", "eight"),
        {"alpha": "eight"},
    ),
]
assert len({c.id for c in CASES}) == len(CASES)
N_CASES = len(CASES)  # reported: the size of the corpus


def test_corpus_size() -> None:
    assert N_CASES >= 40


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under ``root``: size, mtime and (readable files) the SHA-256 of the bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st_ = p.lstat()
            digest = ""
            if stat.S_ISREG(st_.st_mode) and os.access(p, os.R_OK):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (st_.st_size, st_.st_mtime_ns, digest)
    return out


@pytest.fixture
def case_root(tmp_path: Path):
    root = tmp_path / "case"
    root.mkdir()
    yield root
    for dirpath, dirnames, filenames in os.walk(tmp_path):  # undo chmod 000 for cleanup
        for n in dirnames + filenames:
            os.chmod(Path(dirpath) / n, 0o700)
    os.chmod(root, 0o700)


def _prepare(case: Case, root: Path) -> Path:
    path = case.build(root)
    if case.id.startswith("unreadable") and os.access(path, os.R_OK | os.X_OK * path.is_dir()):
        pytest.skip("chmod 000 leaves it readable here (running as root)")
    return path


def _needles(case: Case, root: Path) -> list[str]:
    # messages name paths as given (absolute here); the needles are relative to the case root
    return list(case.needles)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_refuses(case: Case, case_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _prepare(case, case_root)
    capsys.readouterr()
    before = _snapshot(case_root.parent)
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(path), *case.args])
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("coto-tools: error: ")
    assert "Traceback" not in err
    for needle in _needles(case, case_root):
        assert needle in err, f"{needle!r} not in {err!r}"
    assert _snapshot(case_root.parent) == before
    assert not (case_root.parent / f"{case_root.name}-PWNED").exists()


@pytest.mark.parametrize("case", [c for c in CASES if c.id != "alpha-text"], ids=lambda c: c.id)
def test_api_refuses(case: Case, case_root: Path) -> None:
    path = _prepare(case, case_root)
    before = _snapshot(case_root.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a refusal must not hide behind a warning
        with pytest.raises(CotoError) as exc:
            load_adapter(path, **case.api)
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in _needles(case, case_root):
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert _snapshot(case_root.parent) == before
    assert not (case_root.parent / f"{case_root.name}-PWNED").exists()


@pytest.mark.parametrize("target", ["file", "dir"])
def test_permission_errors_without_root(
    case_root: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """The chmod cases skip as root; this simulates the same PermissionError everywhere."""
    path = bare("p.safetensors")(case_root) if target == "file" else peft_dir("pd")(case_root)
    real_open, real_is_file = Path.open, Path.is_file

    def deny_open(self, *a, **kw):
        if self.name.endswith(".safetensors"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *a, **kw)

    def deny_stat(self):
        if self.parent == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "open", deny_open)
    monkeypatch.setattr(Path, "is_file", deny_stat)
    with pytest.raises(CotoError, match=r"p(d|\.safetensors).*cannot read: Permission denied"):
        load_adapter(path)


def test_api_alpha_text(case_root: Path) -> None:
    from coto_tools.errors import OptionError

    path = bare("t.safetensors")(case_root)
    with pytest.raises(OptionError, match="--alpha must be a number, got 'eight'"):
        load_adapter(path, alpha="eight")  # type: ignore[arg-type]


# -- bounded fuzzing ----------------------------------------------------------------------

VALID = valid_bytes()


def _only_coto_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.safetensors"
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                open_checkpoint(path).load()
            except CotoError:
                pass


@settings(
    max_examples=150, deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _only_coto_errors(data)


@settings(
    max_examples=250, deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    st.integers(0, len(VALID)),
)
def test_fuzz_mutated_valid_file(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for pos, byte in edits:
        data[pos] = byte
    _only_coto_errors(bytes(data[:cut]) if cut % 3 == 0 else bytes(data))


@settings(
    max_examples=150, deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.dictionaries(
        st.sampled_from(
            [f"{P}{M}.lora_A.weight", f"{P}{M}.lora_B.weight", "x.lora_A.weight", "__metadata__"]
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers(-5, 200) | st.text(max_size=5) | st.floats(),
            lambda kids: (
                st.lists(kids, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["dtype", "shape", "data_offsets", "lora_alpha"]),
                    kids,
                    max_size=3,
                )
            ),
            max_leaves=8,
        ),
        max_size=4,
    ),
    st.binary(max_size=64),
)
def test_fuzz_generated_headers(header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    _only_coto_errors(struct.pack("<Q", len(raw)) + raw + data)


def test_pickle_warnings_dropped_on_failure_and_passed_on_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coto_tools.adapters import _header
    from coto_tools.errors import CheckpointError

    path = tmp_path / "a.bin"
    path.write_bytes(b"x")

    def warn_then(result: object):
        def fake_load(*args: object, **kwargs: object) -> object:
            warnings.warn("torch says something", UserWarning, stacklevel=1)
            if isinstance(result, Exception):
                raise result
            return result

        return fake_load

    monkeypatch.setattr(_header.torch, "load", warn_then(RuntimeError("bad bytes")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="RuntimeError: bad bytes"):
            _header.load_pickle(path)
    assert [str(w.message) for w in caught] == []

    monkeypatch.setattr(_header.torch, "load", warn_then({"w": torch.ones(2)}))
    with pytest.warns(UserWarning, match="torch says something"):
        out = _header.load_pickle(path)
    assert list(out) == ["w"]
