"""LLM adapters as people have them (issue 18): GPT-2 Conv1D targets, bf16, causal-LM data
formats scored on the right tokens, the "other" player group, --dtype and --players-map.

Every number is checked against an independent computation: PEFT's own forward in the same
dtype, or a hand computation on the word-level tokenizer (a text's ids are its words' indices).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_executor import run_cli  # noqa: E402
from test_llm_fixtures import (  # noqa: E402
    UNK,
    load_peft,
    peft_lm_adapter,
    save_gpt2,
    save_llama,
    word_ids,
)
from test_user_task_fixtures import (  # noqa: E402
    peft_adapter,
    save_bert_classifier,
    texts,
    write_csv,
    write_jsonl,
)

from coto_tools.adapters.io import load_adapter  # noqa: E402
from coto_tools.adapters.players import OTHER, make_players  # noqa: E402
from coto_tools.errors import OptionError, TaskError  # noqa: E402
from coto_tools.prune.strategies import select_strategy  # noqa: E402
from coto_tools.runtime.dtype import check_dtype, resolve_dtype  # noqa: E402
from coto_tools.runtime.evaluator import Evaluator  # noqa: E402
from coto_tools.runtime.gated import inject  # noqa: E402
from coto_tools.runtime.memory import estimate_memory  # noqa: E402
from coto_tools.shapley.plots import heatmap_grid  # noqa: E402
from coto_tools.tasks import get_task  # noqa: E402
from coto_tools.tasks.lm_data import SCORE_MASK  # noqa: E402

PC = [
    {"prompt": "the cat sat on", "completion": " the mat"},
    {"prompt": "a dog ran", "completion": " fast on the mat"},
    {"prompt": "vote", "completion": " party"},
    {"prompt": "the team", "completion": " win the game"},
]
MC = [
    {"question": "the cat sat on", "choices": ["the mat", "vote", "a bank"], "answer": 0},
    {"question": "the team", "choices": ["win", "lose the game"], "answer": "lose the game"},
    {"context": "money bank", "question": "market", "choices": ["share", "poll"], "answer": 1},
]


def _turns(*pairs: str) -> dict[str, list[dict[str, str]]]:
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": c} for i, c in enumerate(pairs)]}


CHAT = [_turns("the cat", "sat on the mat"), _turns("vote", "party", "win", "the poll")]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("llm")
    e = {"dir": d, "llama": save_llama(d / "llama"), "gpt2": save_gpt2(d / "gpt2")}
    e["llama_ad"] = peft_lm_adapter(e["llama"], d / "llama_ad", seed=1,
                                    targets=("q_proj", "v_proj", "down_proj"))  # fmt: skip
    e["gpt2_ad"] = peft_lm_adapter(e["gpt2"], d / "gpt2_ad", seed=2,
                                   targets=("c_attn", "c_proj"), fan_in_fan_out=True)  # fmt: skip
    e["pc"] = write_jsonl(d / "pc.jsonl", PC)
    e["mc"] = write_jsonl(d / "mc.jsonl", MC)
    e["chat"] = write_jsonl(d / "chat.jsonl", CHAT)
    e["bert"] = save_bert_classifier(d / "bert")
    peft_adapter(e["bert"], d / "bert_ad", seed=3, targets=("query", "value", "dense"))
    e["bert_ad"] = d / "bert_ad"
    e["csv"] = write_csv(d / "cls.csv", texts(6))
    return e


def _merged(model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    """``model`` with the adapter's ΔW added to its weights by hand (Linear: (out, in))."""
    ad = load_adapter(adapter_dir)
    with torch.no_grad():
        for name, m in ad.modules.items():
            model.get_submodule(name).weight += m.delta()
    return model


def _token_logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """``log p(ids[t] | ids[:t])`` for ``t = 1..len-1``, one unpadded sequence, float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:]).view(-1, 1))[:, 0]


# -- GPT-2 (Conv1D, fan_in_fan_out) -----------------------------------------------------------
def test_gpt2_gated_forward_equals_peft(env: dict[str, Path]) -> None:
    task = get_task("user", base_model=str(env["gpt2"]), data=str(env["pc"]))
    model = task.build_model()
    ad = load_adapter(env["gpt2_ad"])
    assert {n.rsplit(".", 1)[-1] for n in ad.modules} == {"c_attn", "c_proj"}
    handle = inject(model, ad)
    ids = torch.tensor([word_ids("the cat sat on the mat"), word_ids("a dog ran fast on mat")])
    peft = load_peft(env["gpt2"], env["gpt2_ad"])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, peft(input_ids=ids).logits)
        handle.set_all(0.0)
        with peft.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, peft(input_ids=ids).logits)
    handle.remove()


# -- bfloat16 ---------------------------------------------------------------------------------
def _peft_mean_logprob(pm: torch.nn.Module, task: object) -> tuple[float, int]:
    tot, n = 0.0, 0
    for b in task.batches("eval"):  # type: ignore[attr-defined]
        ids, mask = b.inputs["input_ids"], b.inputs["attention_mask"]
        with torch.no_grad():
            lg = pm(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        lp = torch.log_softmax(lg, -1).gather(-1, ids[:, 1:, None])[..., 0]
        valid = b.inputs[SCORE_MASK][:, 1:]
        tot += float(lp.double()[valid].sum())
        n += int(valid.sum())
    return tot / n, n


@pytest.mark.parametrize("base", ["llama", "gpt2"])
def test_bf16_matches_peft_and_float32(env: dict[str, Path], base: str) -> None:
    task = get_task("user", base_model=str(env[base]), data=str(env["pc"]), batch_size=3)
    ad = load_adapter(env[f"{base}_ad"])
    got = {}
    for dt in ("float32", "bfloat16"):
        ev = Evaluator(task, ad, dtype=dt)
        assert ev.dtype == getattr(torch, dt)
        on, off = ev.value(dict.fromkeys(ad.modules, 1.0)), ev.value({})
        ev.close()
        pm = load_peft(env[base], env[f"{base}_ad"], getattr(torch, dt))
        ref_on, n = _peft_mean_logprob(pm, task)
        with pm.disable_adapter():
            ref_off, _ = _peft_mean_logprob(pm, task)
        # same dtype: PEFT computes the branches as we do (float32 over a half base)
        assert on.n == n and math.isclose(on.logprob, ref_on, rel_tol=1e-6)
        assert math.isclose(off.logprob, ref_off, rel_tol=1e-6)
        got[dt] = (on, off)
    # bfloat16 against float32: within two bfloat16 ulps (2^-7 relative) of the log-prob
    for i in (0, 1):
        a, b = got["float32"][i], got["bfloat16"][i]
        assert math.isclose(a.logprob, b.logprob, rel_tol=2**-7) and a.n == b.n


def test_dtype_spelling_and_auto() -> None:
    assert check_dtype("bf16") == "bfloat16" and check_dtype(None) == "auto"
    assert resolve_dtype("auto", "cpu", torch.bfloat16) == torch.float32
    assert resolve_dtype("auto", "cuda", torch.bfloat16) == torch.bfloat16
    assert resolve_dtype("auto", "cuda", None) == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(OptionError, match="allowed auto, float32"):
        check_dtype("int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_dtype_is_the_config_dtype(env: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    base = tmp_path / "llama_bf16"
    AutoModelForCausalLM.from_pretrained(str(env["llama"]), dtype=torch.bfloat16).save_pretrained(
        str(base)
    )
    for f in env["llama"].glob("*token*"):
        (base / f.name).write_bytes(f.read_bytes())
    for f in env["llama"].glob("vocab.txt"):
        (base / f.name).write_bytes(f.read_bytes())
    task = get_task("user", base_model=str(base), data=str(env["pc"]))
    ad = load_adapter(env["llama_ad"])
    ev = Evaluator(task, ad, device="cuda", dtype="auto")
    assert ev.dtype == torch.bfloat16 and ev.device.type == "cuda"
    ref = Evaluator(task, ad, device="cpu", dtype="bfloat16")
    full = dict.fromkeys(ad.modules, 1.0)
    assert math.isclose(ev.value(full).logprob, ref.value(full).logprob, rel_tol=2**-7)
    ev.close()
    ref.close()


# -- data formats against hand computations -------------------------------------------------
def test_prompt_completion_scores_the_completion_only(env: dict[str, Path]) -> None:
    task = get_task("user", base_model=str(env["llama"]), data=str(env["pc"]), batch_size=3)
    ad = load_adapter(env["llama_ad"])
    ev = Evaluator(task, ad)
    on, off = ev.value(dict.fromkeys(ad.modules, 1.0)), ev.value({})
    assert ev.n_examples == len(PC)
    ev.close()
    for metrics, model in (
        (off, task.build_model()),
        (on, _merged(task.build_model(), env["llama_ad"])),
    ):
        lps, hits = [], []
        for row in PC:
            p, c = word_ids(row["prompt"]), word_ids(row["completion"])
            ids = p + c
            lp = _token_logprobs(model, ids)[len(p) - 1 :]  # predictions of the completion
            with torch.no_grad():
                pred = model(input_ids=torch.tensor([ids])).logits[0, len(p) - 1 : -1].argmax(-1)
            lps.append(lp)
            hits.append(pred == torch.tensor(c))
        lp_all = torch.cat(lps)
        assert metrics.n == sum(len(word_ids(r["completion"])) for r in PC) == len(lp_all)
        assert math.isclose(metrics.logprob, float(lp_all.mean()), rel_tol=1e-5)
        assert math.isclose(metrics.accuracy, float(torch.cat(hits).double().mean()), abs_tol=1e-12)


def test_batches_are_bucketed_by_length(env: dict[str, Path]) -> None:
    task = get_task("user", base_model=str(env["llama"]), data=str(env["pc"]), batch_size=2)
    widths = []
    for b in task.batches("eval"):
        mask = b.inputs["attention_mask"]
        assert mask.shape[1] == int(mask.sum(1).max())  # trimmed to its longest row
        widths.extend(mask.sum(1).tolist())
    assert widths == sorted(widths, reverse=True)


def test_multiple_choice_against_hand_likelihoods(env: dict[str, Path]) -> None:
    task = get_task("user", base_model=str(env["llama"]), data=str(env["mc"]), batch_size=4)
    ad = load_adapter(env["llama_ad"])
    ev = Evaluator(task, ad)
    on, off = ev.value(dict.fromkeys(ad.modules, 1.0)), ev.value({})
    assert ev.n_examples == len(MC) and on.n == len(MC)
    ev.close()
    for metrics, model in (
        (off, task.build_model()),
        (on, _merged(task.build_model(), env["llama_ad"])),
    ):
        acc, acc_norm, lps = [], [], []
        for row in MC:
            prompt = "\n".join(row[k] for k in ("context", "question") if k in row)
            ctx = word_ids(prompt)
            sums = torch.tensor([
                float(_token_logprobs(model, ctx + word_ids(c))[len(ctx) - 1 :].sum())
                for c in row["choices"]
            ], dtype=torch.float64)  # fmt: skip
            answer = (
                row["answer"]
                if isinstance(row["answer"], int)
                else row["choices"].index(row["answer"])
            )
            chars = torch.tensor([len(c) for c in row["choices"]], dtype=torch.float64)
            acc.append(int(sums.argmax()) == answer)
            acc_norm.append(int((sums / chars).argmax()) == answer)
            lps.append(float(torch.log_softmax(sums, 0)[answer]))
        assert math.isclose(metrics.accuracy, sum(acc) / len(acc))
        assert math.isclose(metrics.get("accuracy_norm"), sum(acc_norm) / len(acc_norm))
        assert math.isclose(metrics.logprob, sum(lps) / len(lps), rel_tol=1e-5)
        assert math.isclose(metrics.loss, -metrics.logprob)


def test_chat_scores_assistant_turns(env: dict[str, Path]) -> None:
    task = get_task("user", base_model=str(env["llama"]), data=str(env["chat"]))
    ev = Evaluator(task, load_adapter(env["llama_ad"]))
    base = ev.value({})
    ev.close()
    model = task.build_model()
    lps = []
    for row in CHAT:
        ids: list[int] = []
        scored: list[bool] = []
        for m in row["messages"]:
            words = word_ids(m["content"])
            ids += [UNK, *words]  # the role word is outside the vocabulary
            scored += [False] + [m["role"] == "assistant"] * len(words)
        lp = _token_logprobs(model, ids)
        lps.append(lp[torch.tensor(scored[1:])])
    lp_all = torch.cat(lps)
    assert base.n == len(lp_all) == 4 + 1 + 2
    assert math.isclose(base.logprob, float(lp_all.mean()), rel_tol=1e-5)


def test_format_errors_name_the_row(env: dict[str, Path]) -> None:
    d = env["dir"]
    bad = write_jsonl(d / "bad_mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 5}])
    with pytest.raises(TaskError, match=r"bad_mc.jsonl:1: answer 5"):
        get_task("user", base_model=str(env["llama"]), data=str(bad)).batches("eval")
    bad = write_jsonl(d / "bad_chat.jsonl", [{"messages": [{"role": "user", "content": "a"}]}])
    with pytest.raises(TaskError, match="no assistant turn"):
        get_task("user", base_model=str(env["llama"]), data=str(bad)).batches("eval")
    bad = write_jsonl(d / "one_choice.jsonl", [{"question": "q", "choices": ["a"], "answer": 0}])
    with pytest.raises(
        TaskError, match=r"one_choice.jsonl:1: 'choices' must be a list of at least 2"
    ):
        get_task("user", base_model=str(env["llama"]), data=str(bad))
    bad = write_jsonl(d / "nocol.jsonl", [{"prompt": "x"}])
    with pytest.raises(TaskError, match="no 'text' column"):
        get_task("user", base_model=str(env["llama"]), data=str(bad))


# -- the "other" group -----------------------------------------------------------------------
def test_bert_dense_targets_get_layers_and_other(env: dict[str, Path]) -> None:
    ad = load_adapter(env["bert_ad"])
    assert "bert.pooler.dense" in ad.modules
    layers = make_players(ad.modules, "layer")
    assert layers.names == ("layer0", "layer1", OTHER) and layers.other == ("bert.pooler.dense",)
    assert make_players(ad.modules, "kind").other == ("bert.pooler.dense",)
    with pytest.warns(UserWarning, match="bert.pooler.dense"):
        kept = select_strategy(ad.modules, "everyother")
    assert kept and all(".layer.0." in m for m in kept)
    assert all(m.endswith(".query") for m in select_strategy(ad.modules, "kind:q"))
    grid = heatmap_grid(layers, torch.arange(3.0).numpy())
    assert OTHER in grid.rows


def test_cli_layer_shapley_on_gpt2_bf16_llama_and_bert(env: dict[str, Path], capsys) -> None:  # type: ignore[no-untyped-def]
    d = env["dir"]
    runs = [
        ("gpt2_ad", ["--data", str(env["pc"])], len(PC), "float32"),
        ("llama_ad", ["--data", str(env["mc"]), "--dtype", "bfloat16"], len(MC), "bfloat16"),
        ("bert_ad", ["--data", str(env["csv"])], 6, "float32"),
    ]
    for name, extra, n_rows, dtype in runs:
        out = d / f"shap_{name}"
        code, stdout, err = run_cli(
            ["shapley", str(env[name]), "--players", "layer", "--out", str(out), "--quiet",
             "--base-model", str(env[name.removesuffix("_ad")]), "--device", "cpu", *extra],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        assert "Loading weights" not in err and "memory estimate" not in err
        summary = json.loads((out / "shapley.json").read_text())
        assert summary["n_examples"] == n_rows and summary["dtype"] == dtype
        assert f"{n_rows} examples" in stdout
        if name == "bert_ad":
            assert summary["other"] == ["bert.pooler.dense"] and "player 'other'" in stdout
        else:
            assert summary["other"] == []
    # without --quiet the memory estimate comes first, on stderr
    code, _, err = run_cli(
        ["shapley", str(env["llama_ad"]), "--players", "layer", "--out", str(d / "shap_loud"),
         "--data", str(env["pc"]), "--base-model", str(env["llama"]), "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "memory estimate on cpu: model" in err and "Loading weights" in err
    code, _, err = run_cli(["shapley", str(env["llama_ad"]), "--dtype", "int4"], capsys)
    assert code == 2 and "--dtype 'int4': allowed auto, float32, bfloat16, float16" in err


def test_cli_players_map(env: dict[str, Path], capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pmap = tmp_path / "map.json"
    pmap.write_text(json.dumps({r"\.mlp\.": "mlp", r"layers\.0\.": "attn0"}))
    out = tmp_path / "shap"
    code, _, err = run_cli(
        ["shapley", str(env["llama_ad"]), "--players-map", str(pmap), "--out", str(out),
         "--data", str(env["pc"]), "--base-model", str(env["llama"]), "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = (out / "shapley.csv").read_text().splitlines()
    players = [r.split(",")[0] for r in rows[1:]]
    assert players == ["attn0", "mlp", OTHER]  # layer-1 attention is unmatched
    summary = json.loads((out / "shapley.json").read_text())
    assert summary["grouping"] == "map"
    assert summary["other"] == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    # the map and what each player switches are recorded, so the CSV can be read later
    assert summary["players_map"] == {
        "file": str(pmap),
        "rules": {r"\.mlp\.": "mlp", r"layers\.0\.": "attn0"},
    }
    assert summary["player_modules"]["attn0"] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
    ]
    assert summary["player_modules"][OTHER] == summary["other"]


def test_prune_ranks_the_players_of_a_players_map(  # type: ignore[no-untyped-def]
    env: dict[str, Path], capsys, tmp_path: Path
) -> None:
    """prune --players-map: a shapley.csv of map players drives shapley-top/-bottom (the kept
    modules are the members of the best/worst player) and the Shapley sweeps."""
    pmap = tmp_path / "map.json"
    pmap.write_text(json.dumps({r"\.mlp\.": "mlp", r"layers\.0\.": "attn0"}))
    csv_path = tmp_path / "shapley.csv"
    csv_path.write_text("player,value\nattn0,0.1\nmlp,0.5\nother,-0.2\n")
    ck = str(env["llama_ad"])

    def kept(strategy: str) -> list[str]:
        out = tmp_path / strategy.replace(":", "_")
        code, _, err = run_cli(["prune", ck, "--write-pruned", strategy, "--shapley", str(csv_path),
                             "--players-map", str(pmap), "--out", str(out)], capsys)  # fmt: skip
        assert code == 0, err
        return json.loads((out / "coto_provenance.json").read_text())["pruned"]["kept"]

    assert kept("shapley-top:0.34") == ["model.layers.0.mlp.down_proj",
                                        "model.layers.1.mlp.down_proj"]  # fmt: skip
    assert kept("shapley-bottom:0.34") == ["model.layers.1.self_attn.q_proj",
                                           "model.layers.1.self_attn.v_proj"]  # fmt: skip
    assert kept("shapley-top:0.67") == ["model.layers.0.self_attn.q_proj",
                                        "model.layers.0.self_attn.v_proj",
                                        "model.layers.0.mlp.down_proj",
                                        "model.layers.1.mlp.down_proj"]  # fmt: skip
    out = tmp_path / "prune"
    user = ["--data", str(env["pc"]), "--base-model", str(env["llama"]), "--quiet"]
    code, _, err = run_cli(
        ["prune", ck, "--strategies", "shapley-top:0.34,shapley-bottom:0.34", "--shapley",
         str(csv_path), "--players-map", str(pmap), "--no-rank-sweep", "--steps", "3",
         "--seeds", "0", "--metric", "logprob", "--out", str(out), *user],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = {r["strategy"]: r for r in csv.DictReader((out / "prune.csv").open())}
    assert rows["shapley-top:0.34"]["adapters_kept"] == "2"
    curves = list(csv.DictReader((out / "prune_curves.csv").open()))
    asc = [r for r in curves if r["curve"] == "shapley-asc"]
    assert [r["players_total"] for r in asc][:1] == ["3"]  # three map players, not six modules
    # without the map the CSV's players match no grouping; the map alone has nothing to rank
    code, _, err = run_cli(["prune", ck, "--write-pruned", "shapley-top:0.5", "--shapley",
                         str(csv_path), "--out", str(tmp_path / "x")], capsys)  # fmt: skip
    assert code == 2 and "needs the same --players-map" in err
    code, _, err = run_cli(["prune", ck, "--players-map", str(pmap), "--strategies", "all",
                         "--out", str(tmp_path / "y"), *user], capsys)  # fmt: skip
    assert code == 2 and "--players-map names the players of --shapley values" in err


def test_memory_estimate_counts_model_and_batch(env: dict[str, Path]) -> None:
    task = get_task("user", base_model=str(env["llama"]), data=str(env["pc"]), batch_size=2)
    model = task.build_model()
    small = estimate_memory(model, task.batches("eval")[:1])
    params = sum(p.numel() * 4 for p in model.parameters())
    assert small.model >= params and small.activations > 0 and small.dtype == "float32"
    big = get_task("user", base_model=str(env["llama"]), data=str(env["pc"]), batch_size=4)
    assert estimate_memory(model, big.batches("eval")).activations > small.activations


# -- the documented LLaMA commands, run as written -----------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def _doc_commands(path: Path) -> list[list[str]]:
    """Every ``coto-tools ... llama-lora/ ...`` line of the bash blocks of ``path``."""
    import re
    import shlex

    lines = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for raw in block.splitlines():
            if "llama-lora/" in raw:
                argv = shlex.split(raw, comments=True)
                assert argv[0] == "coto-tools", raw
                lines.append(argv[1:])
    return lines


@pytest.mark.parametrize("doc", ["README.md", "docs/task_plugins.md"])
def test_documented_llama_commands_run(
    env: dict[str, Path], capsys, tmp_path: Path, doc: str
) -> None:  # type: ignore[no-untyped-def]
    commands = _doc_commands(ROOT / doc)
    data = {a for argv in commands for a in argv if a.startswith("docs/examples/")}
    assert data == {"docs/examples/prompt_completion.jsonl", "docs/examples/multiple_choice.jsonl"}
    swap = {"llama-lora/": str(env["llama_ad"]), "./llama": str(env["llama"])}
    for i, argv in enumerate(commands):
        argv = [swap.get(a, str(ROOT / a) if a.startswith("docs/") else a) for a in argv]
        out = tmp_path / f"run{i}"
        code, stdout, err = run_cli([*argv, "--out", str(out), "--quiet", "--threads", "1"], capsys)
        assert code == 0, err
        summary = json.loads((out / "shapley.json").read_text())
        assert summary["n_examples"] == 3 and summary["grouping"] == "layer"


@pytest.mark.parametrize("name", ["prompt_completion", "chat", "multiple_choice"])
def test_example_files_are_scored(env: dict[str, Path], name: str) -> None:
    path = ROOT / "docs" / "examples" / f"{name}.jsonl"
    assert len(path.read_text().splitlines()) == 3
    task = get_task("user", base_model=str(env["llama"]), data=str(path))
    ev = Evaluator(task, load_adapter(env["llama_ad"]))
    m = ev.value({})
    ev.close()
    assert ev.n_examples == 3 and m.n > 0 and math.isfinite(m.logprob)


def test_prune_and_lmc_on_gpt2_adapters(env: dict[str, Path], capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    second = peft_lm_adapter(
        env["gpt2"], tmp_path / "gpt2_b", seed=5, targets=("c_attn", "c_proj"), fan_in_fan_out=True
    )
    user = ["--data", str(env["pc"]), "--base-model", str(env["gpt2"]), "--quiet"]
    code, out, err = run_cli(
        ["prune", str(env["gpt2_ad"]), "--strategies", "all,everyother,low,kind:qkv",
         "--no-curves", "--ranks", "2,1", "--out", str(tmp_path / "prune"), *user],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = (tmp_path / "prune" / "prune.csv").read_text()
    assert "kind:qkv" in rows and "everyother-even" in rows
    code, out, err = run_cli(
        ["lmc", str(env["gpt2_ad"]), str(second), "--points", "3", "--space", "delta",
         "--out", str(tmp_path / "lmc"), *user],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert any(p.suffix == ".csv" for p in (tmp_path / "lmc").iterdir())


def test_documented_python_snippet_runs(env: dict[str, Path], capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import re

    text = (ROOT / "docs" / "task_plugins.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "llama-lora/" in b]
    code = code.replace('"llama-lora/"', repr(str(env["llama_ad"])))
    code = code.replace('"./llama"', repr(str(env["llama"])))
    monkeypatch.chdir(ROOT)  # the snippet names docs/examples/... from the repository root
    exec(compile(code, "task_plugins.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "'accuracy_norm'" in printed and printed.rstrip().endswith(" 3")


def test_merge_eval_reports_accuracy_norm(env: dict[str, Path], capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    second = peft_lm_adapter(
        env["llama"], tmp_path / "b", seed=7, targets=("q_proj", "v_proj", "down_proj")
    )
    code, out, err = run_cli(
        ["merge", str(env["llama_ad"]), str(second), "--out", str(tmp_path / "m"), "--eval",
         "--data", str(env["mc"]), "--base-model", str(env["llama"]), "--dtype", "bfloat16"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("eval ")]
    assert len(lines) == 4 and all("accuracy_norm" in ln and "(n=3)" in ln for ln in lines)


def test_csv_multiple_choice_equals_jsonl(env: dict[str, Path], tmp_path: Path) -> None:
    import csv

    path = tmp_path / "mc.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "choices", "answer"])
        for row in MC[:2]:
            answer = row["answer"]
            idx = answer if isinstance(answer, int) else row["choices"].index(answer)
            w.writerow([row["question"], json.dumps(row["choices"]), str(idx)])
    ad = load_adapter(env["llama_ad"])
    got = []
    for data, limit in ((path, None), (env["mc"], 2)):
        task = get_task("user", base_model=str(env["llama"]), data=str(data), limit=limit)
        ev = Evaluator(task, ad)
        got.append(ev.value(dict.fromkeys(ad.modules, 1.0)))
        ev.close()
    assert got[0] == got[1] and got[0].n == 2


def test_bert_dense_adapter_matches_peft(env: dict[str, Path]) -> None:
    """The BERT adapter with a pooler branch (player 'other'): v(N) equals PEFT's forward."""
    import warnings

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    spec = {
        "base_model": str(env["bert"]),
        "data": str(env["csv"]),
        "head_from": str(env["bert_ad"]),
    }
    task = get_task("user", **spec)
    ad = load_adapter(env["bert_ad"])
    ev = Evaluator(task, ad)
    full = ev.value(dict.fromkeys(ad.modules, 1.0))
    ev.close()
    base = AutoModelForSequenceClassification.from_pretrained(str(env["bert"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(base, str(env["bert_ad"])).eval()
    lps = []
    for b in task.batches("eval"):
        with torch.no_grad():
            logits = pm(**b.inputs).logits.double()
        lps.append(torch.log_softmax(logits, -1).gather(1, b.labels.view(-1, 1))[:, 0])
    assert math.isclose(full.logprob, float(torch.cat(lps).mean()), rel_tol=1e-5)


def test_document_groups_add_up_on_token_and_question_tasks(env: dict[str, Path]) -> None:
    """Group evaluators of a per-token task (prompt/completion, GPT-2) and of a multiple-choice
    task (Llama): weighted by their ``n`` (tokens, questions) the groups' metrics are the whole
    split's, so the documents-sampled Shapley values add up to the whole game's."""
    for base, data in (("gpt2", "pc"), ("llama", "mc")):
        task = get_task("user", base_model=str(env[base]), data=str(env[data]), batch_size=1)
        ad = load_adapter(env[f"{base}_ad"])
        ev = Evaluator(task, ad)
        assert task.document_units("eval") >= 2
        views = ev.document_groups(2)
        rng = torch.Generator().manual_seed(0)
        for _ in range(3):
            cfg = {m: float(torch.rand(1, generator=rng) < 0.5) for m in ad.modules}
            whole = ev.value(cfg)
            parts = [v.value(cfg) for v in views]
            n = [p.n for p in parts]
            assert sum(n) == whole.n
            for m in ("logprob", "accuracy", "loss"):
                got = sum(k * p.get(m) for k, p in zip(n, parts, strict=True)) / sum(n)
                assert math.isclose(got, whole.get(m), rel_tol=1e-5, abs_tol=1e-9), (base, m)
        ev.close()


def test_cli_document_groups_on_a_per_token_task(
    env: dict[str, Path], capsys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A grouped run on GPT-2 prompt/completion data: groups weighted by their scored tokens."""
    out = tmp_path / "g"
    code, stdout, err = run_cli(
        ["shapley", str(env["gpt2_ad"]), "--players", "module", "--estimator", "stratified",
         "--budget", "30", "--document-groups", "2", "--batch-size", "1", "--out", str(out),
         "--quiet", "--base-model", str(env["gpt2"]), "--data", str(env["pc"])],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "shapley.json").read_text())
    groups = doc["document_groups"]
    assert groups["groups"] == 2 and groups["documents"] == [2, 2]
    # weights: each group's share of the scored (completion) tokens, counted from the batches
    task = get_task("user", base_model=str(env["gpt2"]), data=str(env["pc"]), batch_size=1)
    scored = [sum(int(b.inputs[SCORE_MASK].sum()) for b in part)
              for part in task.document_batches("eval", 2)]  # fmt: skip
    assert sum(scored) == sum(len(word_ids(r["completion"])) for r in PC)
    assert groups["weights"] == pytest.approx([k / sum(scored) for k in scored], abs=1e-6)
    assert scored[0] != scored[1]  # so token weights differ from document weights here
    assert abs(doc["efficiency_gap"]) < 1e-9 and doc["estimator"] == "stratified-documents"
