"""CoToCallback on transformers.Trainer with a PEFT LoRA model (tiny BERT built in code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import LoraConfig, TaskType, get_peft_model  # noqa: E402
from test_user_task_fixtures import bert_config  # noqa: E402

from coto_tools.adapters.players import make_players  # noqa: E402
from coto_tools.errors import OptionError  # noqa: E402
from coto_tools.train.callback import CoToCallback, lora_layers  # noqa: E402
from coto_tools.train.loop import _seeds  # noqa: E402
from coto_tools.train.schedule import CoToSchedule  # noqa: E402

STEPS = 14


class Checker(transformers.TrainerCallback):  # type: ignore[misc]
    """Registered after CoToCallback: snapshots before the step, checks grads and weights."""

    def __init__(self, cb: CoToCallback) -> None:
        self.cb = cb
        self.before: dict[str, torch.Tensor] = {}
        self.grad_checks = 0
        self.frozen_after_active = 0  # inactive steps of a group that was active before
        self.seen_active: set[str] = set()
        self.failures: list[str] = []

    def _params(self) -> dict[str, torch.Tensor]:
        return {
            f"{m}.{n}": p
            for m, layer in self.cb.layers.items()
            for n, p in layer.named_parameters()
            if "lora_" in n
        }

    def _active_modules(self) -> set[str]:
        rec = self.cb.history[-1]
        players = self.cb.players
        assert players is not None
        return {m for name, mem in zip(players.names, players.members, strict=True)
                if name in rec.active for m in mem}  # fmt: skip

    def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        self.before = {k: p.detach().clone() for k, p in self._params().items()}

    def on_pre_optimizer_step(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        active = self._active_modules()
        for k, p in self._params().items():
            on = k.rsplit(".lora_", 1)[0] in active
            if on and p.grad is None:
                self.failures.append(f"step {state.global_step}: active {k} has no grad")
            if not on and p.grad is not None:
                self.failures.append(f"step {state.global_step}: inactive {k} has a grad")
        self.grad_checks += 1

    def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        active = self._active_modules()
        for k, p in self._params().items():
            module = k.rsplit(".lora_", 1)[0]
            same = torch.equal(p.detach(), self.before[k])
            if module not in active:
                if not same:
                    self.failures.append(f"step {state.global_step - 1}: inactive {k} moved")
                if module in self.seen_active:
                    self.frozen_after_active += 1
        changed = [not torch.equal(p.detach(), self.before[k]) for k, p in self._params().items()
                   if k.rsplit(".lora_", 1)[0] in active]  # fmt: skip
        if not any(changed):
            self.failures.append(f"step {state.global_step - 1}: no active parameter moved")
        self.seen_active |= active


def _dataset(n: int = 32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30, (n, 8), generator=g)
    ids[:, 0] = 2
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.int64),
         "labels": torch.tensor(int(ids[i, 1]) % 3)}
        for i in range(n)
    ]  # fmt: skip


def _peft_model():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(bert_config(num_labels=3))
    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=2, lora_alpha=4, target_modules=["query", "value"]
    )
    return get_peft_model(base, cfg)


def test_trainer_callback_skips_inactive_adapters(tmp_path: Path) -> None:
    model = _peft_model()
    cb = CoToCallback(group="layer", seed=3, p_start=0.1, stage1_ratio=0.75)
    check = Checker(cb)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=5e-2,
        weight_decay=0.1,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=_dataset(), callbacks=[cb, check]
    )
    trainer.train()
    assert check.failures == []
    assert check.grad_checks == STEPS
    assert check.frozen_after_active > 0  # momentum existed and still nothing moved
    assert len(cb.history) == STEPS
    assert all(len(r.active) >= 1 for r in cb.history)  # at least one group on each step
    assert any(len(r.active) < 2 for r in cb.history)  # CoTo did switch something off
    # after training every layer is on again
    assert not any(layer.disable_adapters for layer in cb.layers.values())

    # same schedule, grouping and gate draws as the built-in trainer with the same seed
    names = list(lora_layers(model))
    assert names[0] == "bert.encoder.layer.0.attention.self.query"
    players = make_players(names, "layer")
    assert cb.players is not None and cb.players.names == players.names
    sched = CoToSchedule(STEPS, p_start=0.1, stage1_ratio=0.75)
    rng = _seeds(3)[2]
    for t, rec in enumerate(cb.history):
        assert rec.p == sched.p(t)
        mask = sched.sample(t, len(players), rng)
        assert rec.active == tuple(n for n, on in zip(players.names, mask, strict=True) if on)
    assert cb.record()["groups"]["names"] == list(players.names)


def test_disabled_layer_gets_no_grad_but_zero_scaling_would() -> None:
    """Why the callback disables layers instead of zeroing their scaling."""
    model = _peft_model()
    layers = lora_layers(model)
    batch = _dataset(4)
    ids = torch.stack([b["input_ids"] for b in batch])
    name = "bert.encoder.layer.0.attention.self.query"
    layers[name].scaling["default"] = 0.0
    model(input_ids=ids).logits.sum().backward()
    a = layers[name].lora_A["default"].weight
    assert a.grad is not None and torch.count_nonzero(a.grad) == 0  # zeros, not None
    model.zero_grad(set_to_none=True)
    layers[name].scaling["default"] = 2.0
    cb = CoToCallback(group="module")
    cb.bind(model, 10)
    cb.set_active({m for m in layers if m != name})
    model(input_ids=ids).logits.sum().backward()
    assert a.grad is None
    assert (
        layers["bert.encoder.layer.1.attention.self.value"].lora_A["default"].weight.grad
        is not None
    )


def test_callback_options_checked() -> None:
    with pytest.raises(OptionError, match="group"):
        CoToCallback(group="bogus")
    with pytest.raises(OptionError, match="p_start"):
        CoToCallback(p_start=2.0)
    cb = CoToCallback()
    with pytest.raises(OptionError, match="no PEFT LoRA layers"):
        cb.bind(torch.nn.Linear(2, 2), 5)
    assert np.all(np.array([1]) == 1)
