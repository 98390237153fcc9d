"""``coto-tools lmc`` on the tiny task: outputs, labels, --from-zero, --plane, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from coto_tools.adapters.io import save_adapter
from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.cli import main
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.tasks import get_task

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _record(task: str, method: str, seed: int) -> str:
    rec = {
        "format": "coto-tools/train-run",
        "task": task,
        "task_variant": {},
        "method": method,
        "seed": seed,
        "config": {},
    }
    return json.dumps(rec)


def _run_dir(root: Path, name: str, seed: int, *, method: str = "lora", task: str = "tiny") -> Path:
    """A run directory as ``coto-tools train`` writes it, with random (non-zero) factors."""
    tiny = get_task("tiny")
    model = tiny.build_model()
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for t in tiny.default_targets():
        lin = model.get_submodule(t)
        mods[t] = LoraModule(
            0.3 * torch.randn(4, lin.in_features, generator=g),
            0.3 * torch.randn(lin.out_features, 4, generator=g),
            alpha=8.0,
        )
    path = root / name
    save_adapter(LoraAdapter(mods), path, extra_files={"coto.json": _record(task, method, seed)})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "r1": _run_dir(root, "r1", 1),
        "r2": _run_dir(root, "r2", 2),
        "c1": _run_dir(root, "c1", 11, method="coto"),
        "c2": _run_dir(root, "c2", 12, method="coto"),
        "other": _run_dir(root, "other", 3, task="bbc-topic"),
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("coto-tools: error:")
    return err


def test_pair_outputs_and_exact_endpoints(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    main(["lmc", str(runs["r1"]), str(runs["r2"]), "--points", "3", "--out", str(out), "--quiet"])
    assert sorted(p.name for p in out.iterdir()) == ["lmc.csv", "lmc.json", "lmc.png"]
    rows = _rows(out / "lmc.csv")
    assert len(rows) == 2 * 3
    assert {r["space"] for r in rows} == {"delta", "factor"}
    assert {r["label"] for r in rows} == {"lora s1-s2"}
    summary = json.loads((out / "lmc.json").read_text())
    pair = summary["pairs"][0]
    assert set(pair["spaces"]) == {"delta", "factor"}
    for space in pair["spaces"].values():
        assert space["loss"]["barrier"] >= 0.0 and "midpoint" in space
    # a = 0 and a = 1 are the adapters' own evaluations, bit for bit (CSV floats are repr'd)
    from coto_tools.adapters.io import load_adapter

    tiny = get_task("tiny")
    for name, a in (("r1", "0.0"), ("r2", "1.0")):
        adapter = load_adapter(runs[name])
        own = Evaluator(tiny, adapter).value(dict.fromkeys(adapter.modules, 1.0))
        for r in rows:
            if r["a"] == a:
                assert float(r["loss"]) == own.loss and float(r["accuracy"]) == own.accuracy
        assert pair["endpoints"][f"lora s{name[1]}"]["loss"] == own.loss
    assert "barrier" in capsys.readouterr().out


def test_several_pairs_labels_and_default_out(runs: dict[str, Path], capsys) -> None:
    argv = [
        "lmc",
        "--pair",
        str(runs["r1"]),
        str(runs["r2"]),
        "--pair",
        str(runs["c1"]),
        str(runs["c2"]),
        "--label",
        "lora",
        "--label",
        "coto",
        "--points",
        "2",
        "--space",
        "delta",
        "--split",
        "quick",
        "--quiet",
    ]
    main(argv)
    out = runs["r1"] / "lmc"
    rows = _rows(out / "lmc.csv")
    assert [(r["pair"], r["label"]) for r in rows][::3] == [("0", "lora"), ("1", "coto")]
    assert all(r["n"] == "32" for r in rows)  # the quick split
    # a second run refuses to overwrite, and --force overwrites
    _fail(argv, capsys)
    main([*argv, "--force"])


def test_from_zero_starts_at_the_base_model(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "z"
    main(
        [
            "lmc",
            str(runs["r1"]),
            "--from-zero",
            "--max-scale",
            "1.5",
            "--points",
            "3",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    rows = _rows(out / "lmc.csv")
    assert [r["a"] for r in rows] == ["0.0", "0.5", "1.0", "1.5"] * 2  # delta, then factor
    tiny = get_task("tiny")
    from coto_tools.adapters.io import load_adapter
    from coto_tools.runtime.evaluator import Evaluator

    base = Evaluator(tiny, load_adapter(runs["r1"])).value({})
    for r in (rows[0], rows[4]):
        assert float(r["loss"]) == base.loss and float(r["accuracy"]) == base.accuracy


def test_plane(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "p"
    main(
        [
            "lmc",
            str(runs["r1"]),
            str(runs["r2"]),
            str(runs["c1"]),
            "--plane",
            "--grid",
            "3",
            "--margin",
            "0.5",
            "--split",
            "quick",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == ["lmc.json", "lmc_plane.csv", "lmc_plane.png"]
    plane = json.loads((out / "lmc.json").read_text())["plane"]
    assert set(plane["corners"]) == {"lora s1", "lora s2", "coto s11"}
    # grid step 1/2, margin 1 step: i, j >= -1 and i + j <= 3 gives 6 + 5 + 4 + 3 + 2 + 1 points
    assert len(_rows(out / "lmc_plane.csv")) == plane["n_points"] == 21


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--points", "1"], "--points"),
        (["--space", "sideways"], "sideways"),
        (["--plane", "--grid", "5"], "3 checkpoints"),
        (["--space", "factor", "--plane"], "delta space only"),
        (["--from-zero", "--max-scale", "0.5"], "--max-scale"),
    ],
)
def test_bad_options_exit_2_nothing_written(runs, tmp_path, capsys, extra, match) -> None:
    out = tmp_path / "bad"
    err = _fail(["lmc", str(runs["r1"]), str(runs["r2"]), "--out", str(out), *extra], capsys)
    assert match in err
    assert not out.exists()


def test_bad_inputs_exit_2_nothing_written(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad"
    base = ["--out", str(out), "--quiet"]
    err = _fail(["lmc", str(runs["r1"]), str(runs["other"]), *base], capsys)
    assert "tasks differ" in err and "bbc-topic" in err
    err = _fail(["lmc", str(runs["r1"]), str(tmp_path / "nope"), *base], capsys)
    assert "nope" in err
    err = _fail(["lmc", str(runs["r1"]), *base], capsys)
    assert "2 checkpoints" in err
    err = _fail(["lmc", str(runs["r1"]), str(runs["r2"]), str(runs["c1"]), *base], capsys)
    assert "--plane" in err
    err = _fail(["lmc", str(runs["r1"]), str(runs["r1"]), *base], capsys)
    assert "twice" in err
    err = _fail(
        ["lmc", str(runs["r1"]), str(runs["r2"]), "--label", "x", "--label", "y", *base], capsys
    )
    assert "--label" in err
    err = _fail(["lmc", "--pair", str(runs["r1"]), *base], capsys)
    assert "--pair" in err
    err = _fail(["lmc", str(runs["r1"]), str(runs["r2"]), "--bogus", *base], capsys)
    assert "--bogus" in err
    assert not out.exists()


def test_task_option_overrides_differing_tasks(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "t"
    main(
        [
            "lmc",
            str(runs["r1"]),
            str(runs["other"]),
            "--task",
            "tiny",
            "--points",
            "2",
            "--space",
            "delta",
            "--split",
            "quick",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert json.loads((out / "lmc.json").read_text())["task"] == "tiny"
