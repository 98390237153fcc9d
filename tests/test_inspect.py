"""``coto-tools inspect``: one row per module, totals, ``--json``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from coto_tools.adapters import LoraAdapter, LoraModule, save_adapter
from coto_tools.cli import main

NAMES = {
    "model.layers.0.self_attn.q_proj": (4, 8.0),
    "model.layers.0.mlp.down_proj": (2, 8.0),
    "model.layers.1.self_attn.v_proj": (4, 2.0),
    "score": (1, 8.0),  # an unknown layout
}


def tensors(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: (torch.randn(r, 6, generator=g), torch.randn(5, r, generator=g))
        for n, (r, _) in NAMES.items()
    }


def write_dir(path: Path, *, rslora: bool = False) -> Path:
    mods = {n: LoraModule(A, B, NAMES[n][1], rslora) for n, (A, B) in tensors().items()}
    extras = {"base_model.model.lm_head.weight": torch.ones(2, 6)}
    return save_adapter(LoraAdapter(mods, modules_to_save=extras), path)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("rslora", [False, True])
def test_json_rows_and_totals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rslora: bool
) -> None:
    path = write_dir(tmp_path / "a", rslora=rslora)
    code, out, err = run(["inspect", str(path), "--json"], capsys)
    assert code == 0 and err == ""
    report = json.loads(out)
    rows = {r["name"]: r for r in report["modules"]}
    assert set(rows) == set(NAMES)
    total_sq = 0.0
    for name, (A, B) in tensors().items():
        r, alpha = NAMES[name]
        scaling = alpha / (math.sqrt(r) if rslora else r)
        norm = float(torch.linalg.norm(scaling * (B.double() @ A.double())))
        total_sq += norm**2
        row = rows[name]
        assert (row["in_features"], row["out_features"], row["rank"]) == (6, 5, r)
        assert row["alpha"] == alpha
        assert row["scaling"] == pytest.approx(scaling)
        assert row["delta_norm"] == pytest.approx(norm, rel=1e-6)
    assert (
        rows["model.layers.0.self_attn.q_proj"]["layer"],
        rows["model.layers.0.self_attn.q_proj"]["kind"],
    ) == (0, "q")
    assert rows["model.layers.0.mlp.down_proj"]["kind"] == "down"
    assert (rows["score"]["layer"], rows["score"]["kind"]) == (None, None)
    t = report["totals"]
    assert t["modules"] == 4 and t["unknown_layout"] == 1
    assert t["params"] == sum(r * 6 + 5 * r for r, _ in NAMES.values())
    assert t["delta_norm"] == pytest.approx(math.sqrt(total_sq), rel=1e-6)
    assert report["use_rslora"] is rslora
    assert report["modules_to_save"] == ["base_model.model.lm_head.weight"]


def test_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_dir(tmp_path / "a")
    code, out, err = run(["inspect", str(path)], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == [
        "name",
        "tower",
        "layer",
        "kind",
        "in",
        "out",
        "rank",
        "alpha",
        "scaling",
        "||dW||_F",
    ]
    rows = [ln.split() for ln in lines[2:6]]
    assert {r[0] for r in rows} == set(NAMES)
    q = next(r for r in rows if r[0] == "model.layers.0.self_attn.q_proj")
    assert q[1:8] == ["main", "0", "q", "6", "5", "4", "8"] and q[8] == "2"
    score = next(r for r in rows if r[0] == "score")
    assert score[2:4] == ["-", "-"]
    assert "4 modules" in out and "1 module(s) with an unrecognised layout" in out
    assert "modules_to_save tensors carried through: base_model.model.lm_head.weight" in out


def test_bare_file_warns_on_one_line_and_alpha_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bare.safetensors"
    sd = {}
    for n, (A, B) in tensors().items():
        sd[f"{n}.lora_A.weight"], sd[f"{n}.lora_B.weight"] = A, B
    save_file(sd, str(f))
    code, out, err = run(["inspect", str(f), "--json"], capsys)
    assert code == 0
    assert err.count("\n") == 1 and err.startswith("coto-tools: warning:") and "alpha = rank" in err
    assert all(r["scaling"] == 1.0 for r in json.loads(out)["modules"])
    code, out, err = run(["inspect", str(f), "--json", "--alpha", "3"], capsys)
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["alpha_source"] == "--alpha"
    assert {r["name"]: r["scaling"] for r in report["modules"]}["score"] == 3.0
