"""``coto-tools train`` on the built-in ``tiny`` task: run directory, load_run, inspect, merge."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

import pytest
import torch

pytest.importorskip("transformers")

from test_executor import run_cli  # noqa: E402

from coto_tools.errors import CheckpointError  # noqa: E402
from coto_tools.runtime.gated import inject  # noqa: E402
from coto_tools.tasks.base import metrics_from_logits  # noqa: E402
from coto_tools.train import TrainConfig, load_run, train  # noqa: E402

# 2 threads on 2 shared cores make OpenMP spin against the other test jobs (a tiny step then
# takes ~50x longer); the tiny model needs no parallelism.


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = ["train", "--task", "tiny", "--steps", "60", "--lr", "1e-2", "--rank", "4", "--quiet"]


def test_trained_adapter_beats_zero_shot_on_tiny() -> None:
    for method in ("coto", "lora"):
        cfg = TrainConfig(task="tiny", method=method, steps=60, lr=1e-2, rank=4)
        res = train(cfg, progress=False)
        # zero-shot is near chance (3 classes); 96 eval texts, so 0.25 is ~5 standard errors
        assert res.metrics.accuracy > res.zero_shot.accuracy + 0.25, (method, res.metrics)
        assert res.metrics.loss < res.zero_shot.loss - 0.3, (method, res.metrics)


def test_train_writes_a_self_contained_run_directory(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        [*TINY, "--seed", "3", "--targets", "q,v", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "accuracy" in stdout and "zero-shot" in stdout
    rec = json.loads((out / "coto.json").read_text())
    assert rec["task"] == "tiny" and rec["method"] == "coto" and rec["seed"] == 3
    assert rec["config"]["targets"] == ["q", "v"] and rec["config"]["rank"] == 4
    assert rec["groups"]["names"] == ["layer0", "layer1"]
    with (out / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and list(rows[0]) == [
        "step",
        "loss",
        "p",
        "n_active",
        "active_groups",
        "lr",
    ]
    assert float(rows[0]["p"]) == pytest.approx(0.1) and float(rows[-1]["p"]) == 1.0

    adapter, task, rec2 = load_run(out)
    assert rec2 == rec and task.name == "tiny"
    assert sorted(adapter.modules) == [
        f"encoder.layer.{i}.attention.self.{k}" for i in range(2) for k in ("query", "value")
    ]
    # the reloaded adapter reproduces the recorded metrics on the rebuilt task
    model = task.build_model()
    inject(model, adapter)
    with torch.no_grad():
        pairs = [(task.logits(model, b), b.labels) for b in task.batches("eval")]
    direct = metrics_from_logits(torch.cat([p for p, _ in pairs]), torch.cat([y for _, y in pairs]))
    assert direct.as_dict() == pytest.approx(rec["metrics"])


def test_train_refuses_existing_out_and_bad_options(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    code, _, err = run_cli([*TINY, "--out", str(out)], capsys)
    assert code == 2 and "exists" in err and "--force" in err
    code, _, err = run_cli([*TINY, "--targets", "gate", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "kinds available" in err
    code, _, err = run_cli([*TINY, "--shots", "4", "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "shots" in err  # tiny has no few-shot variant: named, not ignored
    code, _, err = run_cli([*TINY, "--p-start", "2", "--out", str(tmp_path / "z")], capsys)
    assert code == 2 and "p_start" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_same_seed_same_bytes_through_the_cli(tmp_path, capsys) -> None:
    args = ["train", "--task", "tiny", "--steps", "12", "--quiet", "--lora-dropout", "0.1"]
    for name in ("a", "b"):
        assert run_cli([*args, "--out", str(tmp_path / name)], capsys)[0] == 0
    wa = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    wb = (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    assert wa == wb
    assert (tmp_path / "a" / "train_log.csv").read_text() == (
        tmp_path / "b" / "train_log.csv"
    ).read_text()


def test_train_dtype(tmp_path, capsys) -> None:
    """--dtype bfloat16 trains on a bfloat16 base (float32 adapter; recorded metrics are a
    bfloat16 evaluation of it); auto is float32 on the CPU, the same run bit for bit as no flag,
    and float32 stays out of the recorded config (older runs compare equal)."""
    from safetensors.torch import load_file

    from coto_tools.reproduce.commands import train_command
    from coto_tools.runtime.evaluator import Evaluator

    args = ["train", "--task", "tiny", "--steps", "12", "--quiet"]
    runs = {"plain": [], "auto": ["--dtype", "auto"], "bf16": ["--dtype", "bf16"]}
    for name, extra in runs.items():
        code, _, err = run_cli([*args, *extra, "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
    weights = {n: (tmp_path / n / "adapter_model.safetensors").read_bytes() for n in runs}
    assert weights["auto"] == weights["plain"] != weights["bf16"]
    plain = json.loads((tmp_path / "plain" / "coto.json").read_text())
    rec = json.loads((tmp_path / "bf16" / "coto.json").read_text())
    assert plain["dtype"] == "float32" and "dtype" not in plain["config"]
    assert rec["dtype"] == rec["config"]["dtype"] == "bfloat16"
    saved = load_file(str(tmp_path / "bf16" / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    adapter, task, _ = load_run(tmp_path / "bf16")
    ev = Evaluator(task, adapter, split=rec["eval_split"], dtype="bfloat16")
    try:
        assert ev.dtype == torch.bfloat16
        again = ev.value(dict.fromkeys(adapter.modules, 1.0))
    finally:
        ev.close()
    assert again.as_dict() == pytest.approx(rec["metrics"], rel=1e-6)
    assert "--dtype bfloat16" in train_command(rec["config"], "x")
    assert "--dtype" not in train_command(plain["config"], "x")
    code, _, err = run_cli([*args, "--dtype", "int4", "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "--dtype 'int4'" in err and not (tmp_path / "bad").exists()


def test_train_inspect_merge_round_trip(tmp_path, capsys) -> None:
    for seed in (0, 1):
        code, _, err = run_cli(
            [
                "train",
                "--task",
                "tiny",
                "--steps",
                "8",
                "--quiet",
                "--seed",
                str(seed),
                "--out",
                str(tmp_path / f"s{seed}"),
            ],
            capsys,
        )
        assert code == 0, err
    code, stdout, err = run_cli(["inspect", str(tmp_path / "s0"), "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert "encoder.layer.1.attention.self.value" in json.dumps(report)
    merged = tmp_path / "merged"
    code, _, err = run_cli(
        [
            "merge",
            str(tmp_path / "s0"),
            str(tmp_path / "s1"),
            "--method",
            "cat",
            "--out",
            str(merged),
        ],
        capsys,
    )
    assert code == 0, err
    a0, task, _ = load_run(tmp_path / "s0")
    a1, _, _ = load_run(tmp_path / "s1")
    from coto_tools.adapters import load_adapter

    m = load_adapter(merged)
    for name in a0.modules:  # cat with default weights = the exact average of the deltas
        expected = 0.5 * (a0.delta(name) + a1.delta(name))
        torch.testing.assert_close(m.delta(name), expected, rtol=1e-5, atol=1e-6)


def test_load_run_rejects_a_plain_adapter_directory(tmp_path) -> None:
    from coto_tools.adapters import save_adapter

    res = train(TrainConfig(task="tiny", steps=2), progress=False)
    save_adapter(res.adapter, tmp_path / "plain")
    with pytest.raises(CheckpointError, match="coto.json"):
        load_run(tmp_path / "plain")
