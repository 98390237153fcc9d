"""``coto-tools shapley``: default outputs, resume, several checkpoints, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_executor import run_cli

from coto_tools.shapley import shapley_from_table
from coto_tools.shapley.run import LOG_FILE
from coto_tools.train import TrainConfig, train

OUTPUTS = (
    "shapley.csv",
    "shapley.json",
    "shapley_heatmap.png",
    "shapley_convergence.png",
    LOG_FILE,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shapley_cli")
    out = []
    for seed in (1, 2):
        result = train(TrainConfig(task="tiny", steps=12, lr=2e-2, seed=seed), progress=False)
        out.append(result.save(root / f"run{seed}"))
    return Path(out[0]), Path(out[1])


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(["shapley", *argv], capsys)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _log_table(path: Path, n: int, metric: str) -> np.ndarray:
    table = np.full(1 << n, np.nan)
    for line in path.read_text().splitlines()[1:]:
        obj = json.loads(line)
        table[int(obj["coalition"][::-1], 2)] = obj["values"][metric]
    return table


def test_default_run_writes_every_output_and_resumes(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "ck"
    shutil.copytree(runs[0], ckpt)
    code, out, err = _run([str(ckpt), "--quiet"], capsys)
    assert code == 0, err
    d = ckpt / "shapley"
    for name in OUTPUTS:
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    doc = json.loads((d / "shapley.json").read_text())
    assert doc["estimator"] == "exact" and doc["evaluations"] == 64  # 6 modules, auto -> exact
    assert doc["task"] == "tiny" and doc["split"] == "eval" and doc["metric"] == "logprob"
    assert abs(doc["efficiency_gap"]) < 1e-9
    for key in ("v_full", "v_empty", "rank_stability", "wall_time_s", "seed", "budget"):
        assert key in doc
    bal = doc["balance"]
    assert set(bal["layer_contributions"]) == {"0", "1"}
    assert 0.0 <= bal["gini_abs"] <= 1.0 and 0.0 < bal["top3_share"] <= 1.0
    rows = _read_csv(d / "shapley.csv")
    assert len(rows) == 6
    assert {"value_logprob", "stderr_accuracy", "ci_high_loss"} <= set(rows[0])
    assert [r["layer"] for r in rows] == ["0", "0", "0", "1", "1", "1"]
    assert [r["kind"] for r in rows] == ["q", "k", "v"] * 2
    # exact values recomputed here from the logged table, for every metric
    for metric in ("logprob", "accuracy", "loss"):
        table = _log_table(d / LOG_FILE, 6, metric)
        assert np.isfinite(table).all()
        phi = shapley_from_table(table)
        got = np.array([float(r[f"value_{metric}"]) for r in rows])
        np.testing.assert_allclose(got, phi, atol=1e-12)
    assert np.allclose([float(r["value"]) for r in rows], [float(r["value_logprob"]) for r in rows])
    # loss = -logprob, so their Shapley values are opposite
    np.testing.assert_allclose(
        [float(r["value_loss"]) for r in rows], [-float(r["value_logprob"]) for r in rows]
    )
    # rerun: everything from the log, same numbers
    before = (d / "shapley.csv").read_text()
    code, out, err = _run([str(ckpt), "--quiet"], capsys)
    assert code == 0, err
    assert "0 computed now, 64 from the log" in out
    assert (d / "shapley.csv").read_text() == before
    assert len((d / LOG_FILE).read_text().splitlines()) == 1 + 64


def test_kind_players_sampling_and_group_columns(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(runs[0]), "--players", "kind", "--estimator", "permutation", "--budget", "6"]
    code, _, err = _run(
        [*args, "--split", "quick", "--out", str(tmp_path / "o"), "--quiet"], capsys
    )
    assert code == 0, err
    rows = _read_csv(tmp_path / "o" / "shapley.csv")
    assert [r["player"] for r in rows] == ["q", "k", "v"]
    assert [r["kind"] for r in rows] == ["q", "k", "v"] and all(r["layer"] == "" for r in rows)
    doc = json.loads((tmp_path / "o" / "shapley.json").read_text())
    assert doc["estimator"] == "permutation" and doc["evaluations"] <= 6
    assert doc["balance"]["layer_cv"] is None  # kind players span layers


def test_two_checkpoints_side_by_side(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs[0], a)
    shutil.copytree(runs[1], b)
    cmp_dir = tmp_path / "cmp"
    args = [str(a), str(b), "--players", "layer", "--out", str(cmp_dir), "--quiet"]
    code, out, err = _run(args, capsys)
    assert code == 0, err
    for ck in (a, b):
        for name in OUTPUTS:
            assert (ck / "shapley" / name).is_file(), (ck, name)
    assert (cmp_dir / "shapley_heatmaps.png").stat().st_size > 0
    rows = _read_csv(cmp_dir / "shapley_compare.csv")
    assert [r["checkpoint"] for r in rows] == [str(a)] * 2 + [str(b)] * 2
    own = _read_csv(b / "shapley" / "shapley.csv")
    assert [float(r["value"]) for r in rows[2:]] == [float(r["value"]) for r in own]
    assert rows[0]["value"] != rows[2]["value"]  # different adapters, different values


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--players", "head"], "--players"),
        (["--budget", "1"], "budget"),
        (["--metric", "f1"], "--metric"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(
    runs: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    needle: str,
) -> None:
    ckpt = tmp_path / "ck"
    shutil.copytree(runs[0], ckpt)
    before = _snapshot(tmp_path)
    code, _, err = _run([str(ckpt), *extra], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert _snapshot(tmp_path) == before


def test_no_task_known_exit_2(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "peft"
    bare.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(runs[0] / name, bare / name)
    before = _snapshot(tmp_path)
    code, _, err = _run([str(bare)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--task" in err
    assert _snapshot(tmp_path) == before
    # with --task it works
    code, _, err = _run([str(bare), "--task", "tiny", "--players", "tower", "--quiet"], capsys)
    assert code == 0, err
    assert (bare / "shapley" / "shapley.json").is_file()


def test_second_checkpoint_bad_means_nothing_runs(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = tmp_path / "a"
    shutil.copytree(runs[0], a)
    before = _snapshot(tmp_path)
    code, _, err = _run([str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "missing" in err
    assert _snapshot(tmp_path) == before


def test_interactions_exact_and_sampled_side_by_side(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from coto_tools.shapley.interactions import fsii_exact

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs[0], a)
    shutil.copytree(runs[1], b)
    cmp_dir = tmp_path / "cmp"
    code, _, err = _run(
        [str(a), str(b), "--interactions", "--out", str(cmp_dir), "--quiet"], capsys
    )
    assert code == 0, err
    assert (cmp_dir / "interaction_heatmaps.png").stat().st_size > 0
    for ck in (a, b):
        d = ck / "shapley"
        rows = _read_csv(d / "interactions.csv")
        assert len(rows) == 15  # 6 module players
        doc = json.loads((d / "interactions.json").read_text())
        assert doc["exact"] is True and doc["coalitions"] == 64
        beta, _ = fsii_exact(_log_table(d / LOG_FILE, 6, "logprob"))
        np.testing.assert_allclose([float(r["value"]) for r in rows], beta[6:], atol=1e-12)
        assert (d / "interaction_heatmap.png").stat().st_size > 0
    # sampled: the same run's coalitions, with standard errors
    out = tmp_path / "s"
    args = [str(a), "--estimator", "stratified", "--budget", "40", "--interactions"]
    code, _, err = _run([*args, "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    doc = json.loads((out / "interactions.json").read_text())
    shap = json.loads((out / "shapley.json").read_text())
    assert doc["exact"] is False and doc["coalitions"] == shap["evaluations"] <= 40
    assert all(p["std_error"] > 0 for p in doc["pairs"]) and "jackknife" in doc["interval"]
    before = _snapshot(tmp_path)
    code, _, err = _run([str(a), "--estimator", "svarm", "--interactions"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "svarm" in err
    assert _snapshot(tmp_path) == before
