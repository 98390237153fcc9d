"""The gated LoRA runtime on the tiny task's BERT: gates 0 / 1, removal, no graph for gate 0."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.runtime import fresh_adapter, inject
from coto_tools.tasks import get_task


@pytest.fixture(scope="module")
def task():  # type: ignore[no-untyped-def]
    return get_task("tiny")


def random_adapter(model: torch.nn.Module, targets: list[str], seed: int) -> LoraAdapter:
    """An adapter with random A and B (B != 0, unlike PEFT's init) so every branch matters."""
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for t in targets:
        lin = model.get_submodule(t)
        A = torch.randn(4, lin.in_features, generator=g) * 0.3
        B = torch.randn(lin.out_features, 4, generator=g) * 0.3
        mods[t] = LoraModule(A=A, B=B, alpha=8.0)
    return LoraAdapter(mods)


def logits_of(task, model):  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return torch.cat([task.logits(model, b) for b in task.batches("quick", 16)])


def test_all_gates_zero_is_the_base_model_exactly(task) -> None:  # type: ignore[no-untyped-def]
    model = task.build_model()
    base = logits_of(task, model)
    handle = inject(model, random_adapter(model, task.default_targets(), 0))
    assert not torch.equal(logits_of(task, model), base)  # the adapter does change the output
    handle.set_all(0.0)
    assert torch.equal(logits_of(task, model), base)


def test_all_gates_one_equal_merged_weights(task) -> None:  # type: ignore[no-untyped-def]
    model = task.build_model()
    adapter = random_adapter(model, task.default_targets(), 1)
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in adapter.modules.items():
            lin = merged.get_submodule(name)
            lin.weight += mod.scaling * mod.B @ mod.A
    inject(model, adapter)
    got, want = logits_of(task, model), logits_of(task, merged)
    assert not torch.equal(want, logits_of(task, task.build_model()))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_half_gate_scales_the_delta(task) -> None:  # type: ignore[no-untyped-def]
    model = task.build_model()
    adapter = random_adapter(model, task.default_targets(), 2)
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in adapter.modules.items():
            merged.get_submodule(name).weight += 0.5 * mod.scaling * mod.B @ mod.A
    handle = inject(model, adapter)
    handle.set_all(0.5)
    torch.testing.assert_close(
        logits_of(task, model), logits_of(task, merged), atol=1e-5, rtol=1e-5
    )


def test_remove_restores_the_base_bit_for_bit(task) -> None:  # type: ignore[no-untyped-def]
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linear_ids = {n: id(m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    base = logits_of(task, model)
    handle = inject(model, random_adapter(model, task.default_targets(), 3))
    handle.add_adapter(random_adapter(model, task.default_targets(), 4), "other")
    restored = handle.remove()
    assert restored is model
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: id(m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} == (
        linear_ids
    )
    assert torch.equal(logits_of(task, model), base)


def test_zero_gate_creates_no_graph_for_that_branch(task) -> None:  # type: ignore[no-untyped-def]
    model = task.build_model()
    targets = task.default_targets()
    adapter = fresh_adapter(
        model, targets, rank=4, alpha=8, generator=torch.Generator().manual_seed(0)
    )
    # non-zero B so that A gets a gradient too
    adapter = LoraAdapter(
        {
            n: LoraModule(A=m.A, B=torch.full_like(m.B, 0.1), alpha=m.alpha)
            for n, m in adapter.modules.items()
        }
    )
    handle = inject(model, adapter, trainable=True)
    off = targets[0]
    handle.set_gates({t: 1.0 for t in targets[1:]} | {off: 0.0})
    batch = task.train_batch(np.arange(8))
    loss = torch.nn.functional.cross_entropy(task.logits(model, batch), batch.labels)
    loss.backward()
    layer = handle.layers[off]
    assert layer.lora_A["default"].grad is None and layer.lora_B["default"].grad is None
    on = handle.layers[targets[-1]]
    assert on.lora_A["default"].grad is not None and on.lora_B["default"].grad is not None
    assert float(on.lora_B["default"].grad.abs().sum()) > 0.0
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
