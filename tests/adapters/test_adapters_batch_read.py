"""Reading several modules with one opening, the cheap finiteness check, and writing without
copies (but never two tensors sharing storage)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from coto_tools.adapters import LoraAdapter, LoraModule, load_adapter, open_checkpoint, save_adapter
from coto_tools.adapters import io as io_mod
from coto_tools.errors import ValidationError


def _adapter() -> LoraAdapter:
    g = torch.Generator().manual_seed(0)
    return LoraAdapter(
        {
            f"layers.{i}.q_proj": LoraModule(
                torch.randn(2, 5, generator=g), torch.randn(3, 2, generator=g), 4.0
            )
            for i in range(4)
        }
    )


def test_modules_reads_many_with_one_opening(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a = _adapter()
    ckpt = open_checkpoint(save_adapter(a, tmp_path / "d"))
    opened: list[str] = []
    real = io_mod.safe_open

    def counting(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io_mod, "safe_open", counting)
    names = ckpt.module_names[1:]
    got = ckpt.modules(names)
    assert len(opened) == 1 and list(got) == names
    for n in names:
        assert torch.equal(got[n].A, a[n].A) and torch.equal(got[n].B, a[n].B)
        assert got[n].alpha == 4.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_found_by_the_cheap_check(tmp_path: Path, bad: float) -> None:
    a = _adapter()
    B = a["layers.2.q_proj"].B.clone()
    B[1, 0] = bad
    path = tmp_path / "bad.safetensors"
    tensors = {f"{k}.lora_{ab}.weight": getattr(m, ab) for k, m in a.modules.items() for ab in "AB"}
    tensors["layers.2.q_proj.lora_B.weight"] = B
    save_file(tensors, str(path), metadata={"lora_alpha": "4"})
    ckpt = open_checkpoint(path)
    with pytest.raises(ValidationError, match=r"layers\.2\.q_proj: non-finite .* in lora_B"):
        ckpt.modules(ckpt.module_names)
    ckpt.modules(["layers.0.q_proj", "layers.3.q_proj"])  # the finite ones read fine


def test_overflowing_sum_of_finite_values_is_finite() -> None:
    big = torch.full((4,), 3e38)  # the sum overflows to inf; every entry is finite
    assert not torch.isfinite(big.sum())
    assert io_mod._all_finite(big)
    half = torch.full((8,), 60000.0, dtype=torch.float16)
    assert io_mod._all_finite(half)
    half[3] = float("nan")
    assert not io_mod._all_finite(half)


def test_save_without_copies_handles_shared_and_sliced_tensors(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    shared = torch.randn(2, 5, generator=g)
    big = torch.randn(6, 2, generator=g)
    a = LoraAdapter(
        {
            "m1": LoraModule(shared, big[:3], 2.0),  # B: a view into a larger storage
            "m2": LoraModule(shared, big[3:], 2.0),  # A: the very same tensor as m1's
            "m3": LoraModule(shared.T.contiguous().T.contiguous(), torch.randn(3, 2), 2.0),
        }
    )
    back = load_adapter(save_adapter(a, tmp_path / "o.safetensors"))
    for n, m in a.modules.items():
        assert torch.equal(back[n].A, m.A) and torch.equal(back[n].B, m.B)
    assert torch.equal(shared, a["m1"].A)  # inputs untouched
