"""What made an adapter (``extra_config``): a sidecar beside a PEFT directory's config, so that
PEFT loads the config without warnings; the config's ``coto`` key in a bare file's metadata."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from coto_tools.adapters import LoraAdapter, LoraModule, open_checkpoint, save_adapter
from coto_tools.adapters.write import ADAPTER_CONFIG, PROVENANCE
from coto_tools.errors import CheckpointError

RECORD = {"method": "ties", "inputs": ["a.safetensors", "b.safetensors"], "density": 0.5}


def _adapter() -> LoraAdapter:
    g = torch.Generator().manual_seed(1)
    return LoraAdapter(
        {
            f"model.layers.{i}.self_attn.q_proj": LoraModule(
                torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g), 4.0
            )
            for i in range(2)
        }
    )


def test_directory_keeps_the_record_beside_the_config(tmp_path: Path) -> None:
    out = save_adapter(_adapter(), tmp_path / "merged", extra_config=RECORD)
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert "coto" not in config
    assert json.loads((out / PROVENANCE).read_text()) == RECORD
    assert open_checkpoint(out).config["coto"] == RECORD


def test_no_record_no_sidecar(tmp_path: Path) -> None:
    out = save_adapter(_adapter(), tmp_path / "plain")
    assert not (out / PROVENANCE).exists()
    assert "coto" not in open_checkpoint(out).config


def test_bare_file_keeps_the_record_in_its_metadata(tmp_path: Path) -> None:
    out = save_adapter(_adapter(), tmp_path / "merged.safetensors", extra_config=RECORD)
    assert open_checkpoint(out).config["coto"] == RECORD
    assert not (tmp_path / PROVENANCE).exists()


def test_the_sidecar_name_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="plain new name"):
        save_adapter(_adapter(), tmp_path / "x", extra_files={PROVENANCE: "{}"})
    assert not (tmp_path / "x").exists()


def test_peft_reads_the_config_without_warnings(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    out = save_adapter(_adapter(), tmp_path / "merged", extra_config=RECORD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = peft.LoraConfig.from_pretrained(str(out))
    assert cfg.r == 2
    assert not [str(w.message) for w in caught if "coto" in str(w.message)]
