"""The analyses from the command line on user tasks: --base-model/--data and --task-plugin."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("peft")

from test_executor import run_cli  # noqa: E402
from test_user_task_fixtures import (  # noqa: E402
    peft_adapter,
    save_bert_classifier,
    save_bert_encoder,
    save_llama,
    texts,
    write_csv,
    write_jsonl,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    e = {
        "cls": save_bert_classifier(d / "tinybert"),
        "enc": save_bert_encoder(d / "tinyenc"),
        "lm": save_llama(d / "tinyllama"),
        "csv": write_csv(d / "d.csv", texts(12)),
        "jsonl": write_jsonl(d / "lm.jsonl", [{"text": t} for t, _ in texts(6)]),
        "dir": d,
    }
    peft_adapter(e["cls"], d / "ckpt", seed=1)
    peft_adapter(e["cls"], d / "ckpt2", seed=2)
    peft_adapter(e["enc"], d / "enc1", seed=1, auto="encoder")
    peft_adapter(e["enc"], d / "enc2", seed=2, auto="encoder")
    peft_adapter(e["lm"], d / "lm1", seed=1, auto="causal-lm")
    peft_adapter(e["lm"], d / "lm2", seed=2, auto="causal-lm")
    return e


def test_prune_with_default_base_model(env: dict[str, Path], capsys) -> None:  # type: ignore[no-untyped-def]
    d = env["dir"]
    code, out, err = run_cli(
        [
            "prune",
            str(d / "ckpt"),
            "--data",
            str(env["csv"]),
            "--no-curves",
            "--no-rank-sweep",
            "--quiet",
            "--out",
            str(d / "p"),
        ],
        capsys,
    )
    assert code == 0, err
    rows = list(csv.DictReader((d / "p" / "prune.csv").open()))
    assert {r["task"] for r in rows} == {"user:d.csv"} and rows[0]["n"] == "12"
    full = next(r for r in rows if r["strategy"] == "all")
    none = next(r for r in rows if r["strategy"] == "none")
    assert full["loss"] != none["loss"]  # the adapter (and its trained head) were applied


def test_shapley_resumes_with_the_recorded_user_task(env: dict[str, Path], capsys) -> None:  # type: ignore[no-untyped-def]
    d = env["dir"]
    args = [
        "shapley",
        str(d / "ckpt"),
        "--data",
        str(env["csv"]),
        "--players",
        "layer",
        "--quiet",
        "--out",
        str(d / "s"),
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "4 evaluations (4 computed now" in out
    rec = json.loads((d / "s" / "shapley.json").read_text())
    assert rec["task"].startswith("user:{")
    code, out, err = run_cli(args, capsys)
    assert code == 0 and "0 computed now, 4 from the log" in out


def test_lmc_prompt_head_and_head_conflict(env: dict[str, Path], capsys) -> None:  # type: ignore[no-untyped-def]
    d = env["dir"]
    code, out, err = run_cli(
        [
            "lmc",
            str(d / "enc1"),
            str(d / "enc2"),
            "--data",
            str(env["csv"]),
            "--label-prompts",
            "This is about {}.",
            "--points",
            "3",
            "--quiet",
            "--out",
            str(d / "l"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "loss barrier" in out and (d / "l" / "lmc.json").is_file()
    # two PEFT sequence-classification adapters with their own trained heads: refused
    code, out, err = run_cli(
        [
            "lmc",
            str(d / "ckpt"),
            str(d / "ckpt2"),
            "--data",
            str(env["csv"]),
            "--quiet",
            "--out",
            str(d / "l2"),
        ],
        capsys,
    )
    assert code == 2 and "different modules_to_save" in err


def test_merge_eval_causal_lm(env: dict[str, Path], capsys) -> None:  # type: ignore[no-untyped-def]
    d = env["dir"]
    code, out, err = run_cli(
        [
            "merge",
            str(d / "lm1"),
            str(d / "lm2"),
            "--out",
            str(d / "m"),
            "--eval",
            "--data",
            str(env["jsonl"]),
            "--batch-size",
            "4",
        ],
        capsys,
    )
    assert code == 0, err
    lines = [x for x in out.splitlines() if x.startswith("eval ")]
    assert [x.split(":")[0] for x in lines] == [
        "eval base",
        f"eval input 1 ({d / 'lm1'})",
        f"eval input 2 ({d / 'lm2'})",
        "eval merged",
    ]
    assert all("perplexity" in x for x in lines)
    code, out, err = run_cli(
        [
            "merge",
            str(d / "lm1"),
            str(d / "lm2"),
            "--out",
            str(d / "m2"),
            "--data",
            str(env["jsonl"]),
        ],
        capsys,
    )
    assert code == 2 and "add --eval" in err and not (d / "m2").exists()
    code, out, err = run_cli(["merge", str(d / "lm1"), "--out", str(d / "m3"), "--eval"], capsys)
    assert code == 2 and "--eval needs a task" in err


def test_prune_with_task_plugin(env: dict[str, Path], capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plugin = tmp_path / "plug.py"
    plugin.write_text(
        "from coto_tools.tasks import get_task\n\n"
        "def make(*, base_model, data, limit=None):\n"
        "    return get_task('user', base_model=base_model, data=data, limit=limit)\n"
    )
    d = env["dir"]
    code, out, err = run_cli(
        [
            "prune",
            str(d / "ckpt"),
            "--task-plugin",
            f"{plugin}:make",
            "--base-model",
            str(env["cls"]),
            "--data",
            str(env["csv"]),
            "--limit",
            "6",
            "--no-curves",
            "--no-rank-sweep",
            "--quiet",
            "--out",
            str(tmp_path / "p"),
        ],
        capsys,
    )
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "p" / "prune.csv").open()))
    assert rows[0]["n"] == "6"
    code, out, err = run_cli(
        [
            "prune",
            str(d / "ckpt"),
            "--data",
            str(env["csv"]),
            "--task",
            "tiny",
            "--quiet",
            "--out",
            str(tmp_path / "q"),
        ],
        capsys,
    )
    assert code == 2 and "--task cannot be combined" in err
