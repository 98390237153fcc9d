"""User tasks (--base-model/--data), task specs and plugins; tiny models built in code."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from test_user_task_fixtures import (  # noqa: E402
    LABELS,
    save_bert_classifier,
    save_bert_encoder,
    save_llama,
    texts,
    write_csv,
    write_jsonl,
)

from coto_tools.adapters import LoraModule, load_adapter, save_adapter  # noqa: E402
from coto_tools.errors import OptionError, TaskError  # noqa: E402
from coto_tools.runtime.evaluator import Evaluator  # noqa: E402
from coto_tools.runtime.gated import fresh_adapter  # noqa: E402
from coto_tools.tasks import get_task, list_tasks, parse_task_spec, task_spec  # noqa: E402
from coto_tools.tasks.options import UserTaskArgs, resolve_base_model, user_task_spec  # noqa: E402
from coto_tools.tasks.user import (  # noqa: E402
    CausalLmTask,
    SequenceClassificationTask,
    UserPromptTask,
    read_rows,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("user")
    return {
        "cls": save_bert_classifier(d / "cls"),
        "enc": save_bert_encoder(d / "enc"),
        "lm": save_llama(d / "lm"),
        "csv": write_csv(d / "d.csv", texts(21)),
        "jsonl": write_jsonl(d / "lm.jsonl", [{"text": t} for t, _ in texts(7)]),
        "ints": write_jsonl(
            d / "ints.jsonl", [{"text": t, "label": i % 3} for i, (t, _) in enumerate(texts(6))]
        ),  # fmt: skip
        "dir": d,
    }


def _random_adapter(model: torch.nn.Module, targets: list[str], seed: int):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    ad = fresh_adapter(model, targets, rank=2, alpha=4.0, generator=g)
    mods = {
        n: LoraModule(m.A, torch.randn(m.B.shape, generator=g), 4.0) for n, m in ad.modules.items()
    }
    return ad.replace(modules=mods)


def test_read_rows_and_errors(env: dict[str, Path], tmp_path: Path) -> None:
    rows = read_rows(env["csv"])
    assert len(rows) == 21 and rows[0].label == "business"
    assert len(read_rows(env["csv"], limit=5)) == 5
    assert read_rows(env["ints"])[1].label == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(TaskError, match="some rows have a label"):
        read_rows(bad)
    bad.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:2: not JSON"):
        read_rows(bad)
    nocol = tmp_path / "x.csv"
    nocol.write_text("sentence,label\nhi,1\n")
    with pytest.raises(TaskError, match="'text' column"):
        read_rows(nocol)


def test_kind_from_data_and_options(env: dict[str, Path]) -> None:
    b, c = str(env["cls"]), str(env["csv"])
    assert isinstance(get_task("user", base_model=b, data=c), SequenceClassificationTask)
    t = get_task("user", base_model=str(env["enc"]), data=c, label_prompts="{}")
    assert isinstance(t, UserPromptTask) and t.labels == LABELS
    assert isinstance(
        get_task("user", base_model=str(env["lm"]), data=str(env["jsonl"])), CausalLmTask
    )
    with pytest.raises(TaskError, match="needs option"):
        get_task("user", data=c)
    with pytest.raises(OptionError, match="label-prompts"):
        get_task("user", base_model=b, data=c, label_prompts="no placeholder")
    bad = env["dir"] / "unknown_label.csv"
    write_csv(bad, [("the cat", "weather")])
    with pytest.raises(TaskError, match="label 'weather'.*label2id"):
        get_task("user", base_model=b, data=str(bad))
    assert "user" not in list_tasks() and "tiny" in list_tasks()


def test_task_spec_round_trip(env: dict[str, Path]) -> None:
    spec = task_spec("user", {"base_model": str(env["cls"]), "data": str(env["csv"]), "limit": 4})
    assert parse_task_spec(spec) == ("user", {"base_model": str(env["cls"]),
                                              "data": str(env["csv"]), "limit": 4})  # fmt: skip
    t = get_task(spec)
    assert isinstance(t, SequenceClassificationTask) and t.split_sizes()["eval"] == 4
    assert task_spec("tiny", {}) == "tiny"
    with pytest.raises(TaskError, match="NAME:"):
        get_task("tiny:notjson")


def test_seq_cls_evaluator_matches_direct_forward(env: dict[str, Path]) -> None:
    task = get_task("user", base_model=str(env["cls"]), data=str(env["csv"]), batch_size=4)
    model = task.build_model()
    ad = _random_adapter(model, task.default_targets(), seed=1)
    ev = Evaluator(task, ad, model=model)
    on = ev.value(dict.fromkeys(ad.modules, 1.0))
    off = ev.value({})
    ev.close()
    # the same numbers by hand: ΔW merged into a copy of the model, one forward over all rows
    ref = task.build_model()
    with torch.no_grad():
        for n, m in ad.modules.items():
            ref.get_submodule(n).weight += m.delta()
    enc = task.encoded("eval")  # type: ignore[attr-defined]
    logits = ref(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits.double()
    lp = torch.log_softmax(logits, -1).gather(1, enc.labels.view(-1, 1)).mean()
    assert on.n == 21 and math.isclose(on.logprob, float(lp), abs_tol=1e-5)
    assert on.loss != off.loss


def test_causal_lm_matches_transformers_loss(env: dict[str, Path]) -> None:
    task = get_task("user", base_model=str(env["lm"]), data=str(env["jsonl"]), batch_size=3)
    model = task.build_model()
    ad = _random_adapter(model, task.default_targets(), seed=2)
    ev = Evaluator(task, ad, model=model)
    on = ev.value(dict.fromkeys(ad.modules, 1.0))
    off = ev.value({})
    with pytest.raises(TaskError, match="per token"):
        ev.metrics_per_example({})
    ev.close()
    # transformers' own mean next-token loss over all rows in one padded batch
    enc = task.encoded("eval")  # type: ignore[attr-defined]
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    ref = task.build_model()
    with torch.no_grad():
        base_loss = ref(
            input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels
        ).loss
        for n, m in ad.modules.items():
            ref.get_submodule(n).weight += m.delta()
        lora_loss = ref(
            input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels
        ).loss
    assert off.n == int(enc.attention_mask[:, 1:].sum())
    assert math.isclose(off.loss, float(base_loss), rel_tol=1e-5)
    assert math.isclose(on.loss, float(lora_loss), rel_tol=1e-5)
    assert math.isclose(on.perplexity, math.exp(on.loss)) and 0.0 <= on.accuracy <= 1.0
    with pytest.raises(TaskError, match="per token"):
        task.logits(model, task.batches("eval")[0])


def test_prompt_head_uses_prefix_reuse(env: dict[str, Path]) -> None:
    task = get_task("user", base_model=str(env["enc"]), data=str(env["csv"]), label_prompts="{}")
    model = task.build_model()
    ad = _random_adapter(model, task.default_targets(), seed=3)
    ev = Evaluator(task, ad, model=model)
    assert ev.layer_passes is not None  # the BERT prefix runner is in use
    on = ev.value(dict.fromkeys(ad.modules, 1.0))
    ev2 = Evaluator(task, ad, reuse_prefix=False)
    assert math.isclose(on.logprob, ev2.value(dict.fromkeys(ad.modules, 1.0)).logprob, abs_tol=1e-5)
    ev.close()
    ev2.close()


def test_base_model_defaults_and_offline_errors(env: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="local Hugging Face cache"):
        resolve_base_model("no-such-org/no-such-model-xyz")
    model = get_task("user", base_model=str(env["cls"]), data=str(env["csv"])).build_model()
    ad = _random_adapter(model, ["bert.encoder.layer.0.attention.self.query"], seed=4)
    ckpt = save_adapter(ad, tmp_path / "a", base_model=str(env["cls"]))
    spec = user_task_spec(UserTaskArgs(data=env["csv"]), [ckpt])
    name, opts = parse_task_spec(str(spec))
    assert name == "user" and opts["base_model"] == str(env["cls"].resolve())
    assert "head_from" not in opts
    missing = save_adapter(ad, tmp_path / "b", base_model="no-such-org/no-such-model-xyz")
    with pytest.raises(TaskError, match="adapter_config.json.*local Hugging Face cache"):
        user_task_spec(UserTaskArgs(data=env["csv"]), [missing])
    with pytest.raises(OptionError, match="--task cannot be combined"):
        user_task_spec(UserTaskArgs(data=env["csv"]), [ckpt], task="tiny")
    assert user_task_spec(UserTaskArgs(), [ckpt], task="tiny") == "tiny"
    assert load_adapter(ckpt).names == ad.names


PLUGIN = """
from coto_tools.tasks.tiny import TinyTask

def make(**options):
    task = TinyTask()
    task.plugin_options = options
    return task

def wrong():
    return 42
"""


def test_plugin_from_file_and_module(tmp_path: Path) -> None:
    f = tmp_path / "my_plugin.py"
    f.write_text(PLUGIN)
    t = get_task("plugin", spec=f"{f}:make", options={"limit": 3})
    assert t.name == "tiny" and t.plugin_options == {"limit": 3}  # type: ignore[attr-defined]
    t2 = get_task("plugin", spec="coto_tools.tasks.tiny:TinyTask")
    assert t2.name == "tiny"
    with pytest.raises(TaskError, match="returned a int"):
        get_task("plugin", spec=f"{f}:wrong")
    with pytest.raises(TaskError, match="no function 'nope'"):
        get_task("plugin", spec=f"{f}:nope")
    with pytest.raises(TaskError, match="cannot import module"):
        get_task("plugin", spec="no_such_module_xyz:make")
    with pytest.raises(TaskError, match="takes no option"):
        get_task("plugin", spec=f"{f}:wrong", options={"data": "x"})
    spec = user_task_spec(UserTaskArgs(task_plugin=f"{f}:make", limit=3), [])
    assert get_task(str(spec)).plugin_options == {"limit": 3}  # type: ignore[attr-defined]


BAD_RETURNS = """
import torch
from coto_tools.tasks.tiny import TinyTask

class Bad(TinyTask):
    def train_batch(self, indices):
        return "not a batch"

    def train_size(self):
        return 0

    def logits(self, model, batch):
        return super().logits(model, batch)[:1]

class FewClasses(TinyTask):
    def logits(self, model, batch):
        return super().logits(model, batch)[:, :1]

def make():
    return Bad()

def few():
    return FewClasses()
"""


def test_plugin_return_values_are_checked(tmp_path: Path) -> None:
    """A plugin method that returns malformed data (rather than raising) is one TaskError naming
    the method, not an AttributeError deep in the evaluator or the trainer."""
    f = tmp_path / "bad_returns.py"
    f.write_text(BAD_RETURNS)
    task = get_task("plugin", spec=f"{f}:make")
    with pytest.raises(TaskError, match=r"train_batch\(\) returned a str, not a Batch"):
        task.train_batch(np.arange(2))
    with pytest.raises(TaskError, match=r"train_size\(\) returned 0, not a positive int"):
        task.train_size()
    model = task.build_model()
    batch = task.batches("eval")[0]
    with pytest.raises(TaskError, match=r"logits\(\) returned \(1, \d+\); expected"):
        task.logits(model, batch)
    few = get_task("plugin", spec=f"{f}:few")
    with pytest.raises(TaskError, match=r"1 classes but the batch has labels 0\.\.\d"):
        few.logits(few.build_model(), few.batches("eval")[0])
