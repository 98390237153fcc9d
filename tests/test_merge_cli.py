"""``coto-tools merge`` on generated adapters: defaults, output, and bad input (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_merge_fixtures import SHAPES, make_adapter

from coto_tools.adapters import load_adapter, save_adapter
from coto_tools.cli import main


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    pa, pb = tmp_path / "a", tmp_path / "b.safetensors"
    save_adapter(make_adapter(0), pa)
    save_adapter(make_adapter(1, rank=2, alpha=4.0), pb)
    return pa, pb


def test_default_invocation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pa, pb = _inputs(tmp_path)
    main(["merge", str(pa), str(pb)])
    out = capsys.readouterr().out
    assert "method: cat, delta space (exact)" in out
    assert "weights: 0.5, 0.5" in out
    assert f"output: {tmp_path / 'merged'}" in out
    merged = load_adapter(tmp_path / "merged")
    a, b = load_adapter(pa), load_adapter(pb)
    for name in SHAPES:
        ref = 0.5 * a.modules[name].delta() + 0.5 * b.modules[name].delta()
        torch.testing.assert_close(merged.modules[name].delta(), ref, atol=1e-6, rtol=0)


def test_options_and_bare_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pa, _ = _inputs(tmp_path)
    pc = tmp_path / "c"
    save_adapter(make_adapter(2), pc)
    out = tmp_path / "o.safetensors"
    argv = ["merge", str(pa), str(pc), "--method", "dare-ties", "--weights", "-1,2"]
    main(
        [
            *argv,
            "--density",
            "0.3",
            "--seed",
            "4",
            "--majority-sign",
            "frequency",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert "method: dare-ties, factor space" in text and "weights: -1, 2" in text
    assert "density: 0.3" in text and "seed: 4" in text and "majority sign: frequency" in text
    assert out.is_file()
    main(
        [
            "merge",
            str(pa),
            str(pc),
            "--method",
            "knots",
            "--rank",
            "3",
            "--out",
            str(tmp_path / "k"),
        ]
    )
    text = capsys.readouterr().out
    assert "blocks merged with ties" in text and "output rank(s): 3" in text


@pytest.mark.parametrize(
    "extra",
    [
        ["--weights", "1"],
        ["--weights", "1,x"],
        ["--density", "0"],
        ["--rank", "0"],
        ["--method", "cat", "--space", "factor"],
        ["--method", "nope"],
        ["--out", "EXISTING"],
    ],
)
def test_bad_input_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    pa, pb = _inputs(tmp_path)
    (tmp_path / "existing").mkdir()
    extra = [str(tmp_path / "existing") if e == "EXISTING" else e for e in extra]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(pa), str(pb), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("coto-tools: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list((tmp_path / "existing").iterdir()) == []


def test_shape_mismatch_names_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pa, _ = _inputs(tmp_path)
    pw = tmp_path / "w"
    save_adapter(make_adapter(3, shapes={**SHAPES, "model.layers.1.self_attn.q_proj": (12, 9)}), pw)
    with pytest.raises(SystemExit):
        main(["merge", str(pa), str(pw)])
    err = capsys.readouterr().err
    assert "model.layers.1.self_attn.q_proj" in err and "(12, 9)" in err
    assert not (tmp_path / "merged").exists()
