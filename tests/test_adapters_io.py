"""Checkpoint I/O: round trips, alpha defaults, atomic writes, streaming, delta norms."""

from __future__ import annotations

import json
import math
import os
import struct
import time
import tracemalloc
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import coto_tools.adapters.io as io_mod
from coto_tools.adapters import (
    CotoWarning,
    LoraAdapter,
    LoraModule,
    load_adapter,
    open_checkpoint,
    save_adapter,
)
from coto_tools.errors import CheckpointError, OptionError, OutputExistsError

Q = "encoder.layer.0.attention.self.query"
V = "encoder.layer.0.attention.self.value"
Q1 = "encoder.layer.1.attention.self.query"


def make_adapter(*, rslora: bool = False, seed: int = 0) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    spec = {Q: (4, 8.0), V: (2, 8.0), Q1: (4, 3.5)}  # mixed ranks and alphas
    mods = {
        n: LoraModule(torch.randn(r, 6, generator=g), torch.randn(5, r, generator=g), a, rslora)
        for n, (r, a) in spec.items()
    }
    extras = {
        "base_model.model.classifier.weight": torch.randn(3, 6, generator=g),
        "base_model.model.classifier.bias": torch.randn(3, generator=g),
    }
    return LoraAdapter(
        mods, config={"base_model_name_or_path": "tiny/base"}, modules_to_save=extras
    )


def assert_same(a: LoraAdapter, b: LoraAdapter) -> None:
    assert list(a.modules) == list(b.modules)
    for n in a.modules:
        ma, mb = a[n], b[n]
        assert torch.equal(ma.A, mb.A) and torch.equal(ma.B, mb.B)
        assert (ma.alpha, ma.rank, ma.use_rslora) == (mb.alpha, mb.rank, mb.use_rslora)
    assert set(a.modules_to_save) == set(b.modules_to_save)
    for k, t in a.modules_to_save.items():
        assert torch.equal(t, b.modules_to_save[k])


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("suffix", ["", ".safetensors"])
def test_round_trip(tmp_path: Path, rslora: bool, suffix: str) -> None:
    a = make_adapter(rslora=rslora)
    out = save_adapter(a, tmp_path / f"out{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the written config carries alpha: no warning
        b = load_adapter(out)
    assert_same(a, b)
    assert b.config["base_model_name_or_path"] == "tiny/base"
    if not suffix:
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["r"] == 4 and cfg["lora_alpha"] == 8
        assert cfg["rank_pattern"] == {V: 2}
        assert cfg["alpha_pattern"] == {Q1: 3.5}
        assert cfg["use_rslora"] is rslora
        assert cfg["target_modules"] == sorted([Q, V, Q1])
        assert cfg["modules_to_save"] == ["classifier"]


def test_round_trip_dtypes(tmp_path: Path) -> None:
    a = make_adapter()
    half = a.replace(
        modules={
            n: LoraModule(m.A.to(torch.bfloat16), m.B.half(), m.alpha) for n, m in a.modules.items()
        }
    )
    b = load_adapter(save_adapter(half, tmp_path / "h"))
    assert b[Q].A.dtype == torch.bfloat16 and b[Q].B.dtype == torch.float16
    assert torch.equal(b[Q].A, half[Q].A)


def bare_file(path: Path, metadata: dict[str, str] | None = None) -> Path:
    a = make_adapter()
    tensors = {}
    for n, m in a.modules.items():
        tensors[f"{n}.lora_A.weight"] = m.A
        tensors[f"{n}.lora_B.weight"] = m.B
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_bare_file_alpha_defaults_to_rank_with_warning(tmp_path: Path) -> None:
    f = bare_file(tmp_path / "bare.safetensors")
    with pytest.warns(CotoWarning, match=r"bare\.safetensors.*assuming alpha = rank"):
        ckpt = open_checkpoint(f)
    assert ckpt.alpha_source.startswith("default")
    a = ckpt.load()
    assert {n: m.alpha for n, m in a.modules.items()} == {Q: 4.0, V: 2.0, Q1: 4.0}
    assert all(m.scaling == 1.0 for m in a.modules.values())


def test_bare_file_alpha_from_metadata_and_override(tmp_path: Path) -> None:
    f = bare_file(tmp_path / "meta.safetensors", {"lora_alpha": "16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = load_adapter(f)
        assert all(m.alpha == 16.0 for m in a.modules.values())
        b = load_adapter(f, alpha=2.0)  # --alpha wins over the metadata
    assert all(m.alpha == 2.0 for m in b.modules.values())
    assert b[V].scaling == 1.0


def test_alpha_override_replaces_config_and_pattern(tmp_path: Path) -> None:
    out = save_adapter(make_adapter(), tmp_path / "d")
    ckpt = open_checkpoint(out, alpha=12.0)
    assert ckpt.alpha_source == "--alpha"
    assert {ckpt.alpha_of(n) for n in ckpt.module_names} == {12.0}
    with pytest.raises(OptionError, match="--alpha must be a finite positive number"):
        open_checkpoint(out, alpha=-1.0)


def test_config_without_lora_alpha_uses_peft_default(tmp_path: Path) -> None:
    out = save_adapter(make_adapter(), tmp_path / "d")
    cfg = json.loads((out / "adapter_config.json").read_text())
    del cfg["lora_alpha"], cfg["alpha_pattern"]
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.warns(CotoWarning, match="PEFT's default lora_alpha=8"):
        a = load_adapter(out)
    assert {m.alpha for m in a.modules.values()} == {8.0}


def test_weights_file_inside_dir_picks_up_config(tmp_path: Path) -> None:
    out = save_adapter(make_adapter(), tmp_path / "d")
    b = load_adapter(out / "adapter_model.safetensors")
    assert b[Q1].alpha == 3.5 and b.config["base_model_name_or_path"] == "tiny/base"


def test_pickle_allowed_uses_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_adapter()
    sd = {
        f"base_model.model.{n}.lora_{ab}.weight": getattr(m, ab)
        for n, m in a.modules.items()
        for ab in "AB"
    }
    torch.save(sd, tmp_path / "adapter.bin")
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused"):
        load_adapter(tmp_path / "adapter.bin")
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    b = load_adapter(tmp_path / "adapter.bin", allow_pickle=True, alpha=1.0)
    assert calls == [True]
    for n in a.modules:
        assert torch.equal(b[n].A, a[n].A) and torch.equal(b[n].B, a[n].B)


# -- atomic writes ------------------------------------------------------------------------


def listing(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("suffix", ["", ".safetensors"])
def test_existing_output_refused_unless_force(tmp_path: Path, suffix: str) -> None:
    a, b = make_adapter(seed=0), make_adapter(seed=1)
    out = save_adapter(a, tmp_path / f"o{suffix}")
    before = listing(tmp_path)
    with pytest.raises(OutputExistsError, match="exists"):
        save_adapter(b, out)
    assert listing(tmp_path) == before
    save_adapter(b, out, force=True)
    assert_same(load_adapter(out), b)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind


@pytest.mark.parametrize("suffix", ["", ".safetensors"])
@pytest.mark.parametrize("existing", [False, True])
def test_no_partial_output_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, existing: bool
) -> None:
    import safetensors.torch as st

    out = tmp_path / f"o{suffix}"
    if existing:
        save_adapter(make_adapter(seed=2), out)
    before = listing(tmp_path)
    real = st.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:
            fh.truncate(50)  # a half-written file ...
        raise OSError(28, "No space left on device")  # ... then the disk fills up

    monkeypatch.setattr(st, "save_file", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_adapter(make_adapter(), out, force=True)
    assert listing(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ([out.name] if existing else [])


# -- streaming ----------------------------------------------------------------------------


def test_open_reads_no_tensor_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = save_adapter(make_adapter(), tmp_path / "d")
    requested: list[list[str]] = []
    real = io_mod.safe_open

    class Counting:
        def __init__(self, *args, **kwargs):
            self._f = real(*args, **kwargs)
            requested.append([])

        def __enter__(self):
            self._inner = self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def get_tensor(self, key):
            requested[-1].append(key)
            return self._inner.get_tensor(key)

    monkeypatch.setattr(io_mod, "safe_open", Counting)
    ckpt = open_checkpoint(out)
    assert requested == []
    assert ckpt.shapes(V) == ((2, 6), (5, 2))  # shapes from the header alone
    names = []
    for name, _m in ckpt.iter_modules():
        names.append(name)
        # one module at a time: exactly this module's two factors have been read so far
        assert requested[-1] == [
            f"base_model.model.{name}.lora_A.weight",
            f"base_model.model.{name}.lora_B.weight",
        ]
        assert len(requested) == len(names)
    assert sorted(names) == sorted([Q, V, Q1])


def sparse_checkpoint(path: Path, big_rows: int) -> Path:
    """A bare file whose data section is mostly one huge (sparse, never written) tensor."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 4, generator=g), torch.randn(3, 2, generator=g)
    blobs = [("m.lora_A.weight", A), ("m.lora_B.weight", B)]
    header: dict[str, object] = {"__metadata__": {"lora_alpha": "2"}}
    pos = 0
    for key, t in blobs:
        n = t.numel() * 4
        header[key] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [pos, pos + n]}
        pos += n
    big = big_rows * 1024 * 4
    header["base_model.model.classifier.weight"] = {
        "dtype": "F32",
        "shape": [big_rows, 1024],
        "data_offsets": [pos, pos + big],
    }
    raw = json.dumps(header).encode()
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for _, t in blobs:
            fh.write(t.numpy().tobytes())
        fh.truncate(8 + len(raw) + pos + big)
    return path


def test_open_and_module_read_stream_a_large_file(tmp_path: Path) -> None:
    f = sparse_checkpoint(tmp_path / "big.safetensors", big_rows=256 * 1024)  # 1 GiB of data
    assert os.path.getsize(f) > 2**30
    tracemalloc.start()
    t0 = time.perf_counter()
    ckpt = open_checkpoint(f)
    m = ckpt.module("m")
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000  # the header only, not the gigabyte
    assert elapsed < 5.0  # generous for a shared machine; reading 1 GiB would take far longer
    assert m.rank == 2 and ckpt.other_keys == ["base_model.model.classifier.weight"]


# -- LoraModule ---------------------------------------------------------------------------


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("alpha", [16.0, 1.0, -3.0])
def test_delta_and_delta_norm(rslora: bool, alpha: float) -> None:
    g = torch.Generator().manual_seed(3)
    A = torch.randn(4, 7, generator=g, dtype=torch.float64)
    B = torch.randn(9, 4, generator=g, dtype=torch.float64)
    m = LoraModule(A, B, alpha, rslora)
    scaling = alpha / (2.0 if rslora else 4.0)
    assert m.scaling == pytest.approx(scaling)
    torch.testing.assert_close(m.delta(torch.float64), scaling * (B @ A))
    assert m.delta_norm() == pytest.approx(float(torch.linalg.norm(scaling * (B @ A))), rel=1e-10)
    assert (m.in_features, m.out_features, m.rank) == (7, 9, 4)


def test_lora_module_rejects_bad_shapes() -> None:
    with pytest.raises(CheckpointError, match="rank mismatch"):
        LoraModule(torch.zeros(3, 4), torch.zeros(5, 2), 1.0)
    with pytest.raises(CheckpointError, match="2-D"):
        LoraModule(torch.zeros(3), torch.zeros(5, 3), 1.0)


def test_adapter_subset_and_replace() -> None:
    a = make_adapter()
    s = a.subset([V, Q])
    assert s.names == [Q, V] and s.modules_to_save == a.modules_to_save
    with pytest.raises(CheckpointError, match="no such module"):
        a.subset(["nope"])
    assert a.replace(source="x").source == "x"
    assert math.isclose(a.delta(Q).norm().item(), a[Q].delta_norm(), rel_tol=1e-5)


@pytest.mark.parametrize("suffix", ["", ".safetensors"])
def test_outputs_get_umask_permissions(tmp_path: Path, suffix: str) -> None:
    old = os.umask(0o022)
    try:
        out = save_adapter(make_adapter(), tmp_path / f"o{suffix}")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == (0o755 if not suffix else 0o644)
    if not suffix:
        assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}
