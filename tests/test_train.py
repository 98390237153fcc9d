"""The CoTo training loop on a toy task: gradients, AdamW, method lora, determinism, targets."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from coto_tools.adapters.players import make_players
from coto_tools.errors import OptionError
from coto_tools.runtime.gated import fresh_adapter, inject
from coto_tools.tasks.base import Batch, Metrics, Task, metrics_from_logits
from coto_tools.train import TrainConfig, resolve_targets, train
from coto_tools.train.loop import train_step
from coto_tools.train.sampler import EpochSampler

N_LAYERS, DIM, VOCAB, SEQ, N_CLASSES = 3, 16, 40, 8, 4


class _SelfAttn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(DIM, DIM)
        self.key = nn.Linear(DIM, DIM)
        self.value = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = torch.softmax(self.query(x) @ self.key(x).transpose(1, 2) / math.sqrt(DIM), dim=-1)
        return x + att @ self.value(x)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = _SelfAttn()
        self.output = nn.Module()
        self.output.dense = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.output.dense(self.self(x))


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _Attention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(self.attention(x), (DIM,))


class _ToyModel(nn.Module):
    """BERT-like names: ``encoder.layer.N.attention.self.{query,key,value}``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer() for _ in range(N_LAYERS))
        self.head = nn.Linear(DIM, N_CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.head(x.mean(dim=1))


class ToyTask(Task):
    """Random tokens; the label is the class whose keyword token (0..3) occurs most often."""

    name = "toy"
    labels = ("a", "b", "c", "d")

    def __init__(self, n_train: int = 256, n_eval: int = 128) -> None:
        g = torch.Generator().manual_seed(123)
        ids = torch.randint(N_CLASSES, VOCAB, (n_train + n_eval, SEQ), generator=g)
        y = torch.randint(0, N_CLASSES, (n_train + n_eval,), generator=g)
        k = torch.randint(2, 4, (n_train + n_eval,), generator=g)
        for i in range(len(y)):
            ids[i, : int(k[i])] = y[i]
        perm = torch.randperm(SEQ, generator=g)
        ids = ids[:, perm]
        self._ids, self._y = ids, y
        self.n_train = n_train

    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        m = _ToyModel().eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def default_targets(self) -> list[str]:
        return [
            f"encoder.layer.{i}.attention.self.{k}"
            for i in range(N_LAYERS)
            for k in ("query", "value")
        ]

    def batches(self, split: str, batch_size: int = 64) -> list[Batch]:
        lo, hi = (0, self.n_train) if split == "train" else (self.n_train, len(self._y))
        return [
            Batch(
                {"ids": self._ids[i : min(i + batch_size, hi)]},
                self._y[i : min(i + batch_size, hi)],
            )
            for i in range(lo, hi, batch_size)
        ]

    def train_size(self) -> int:
        return self.n_train

    def train_batch(self, indices: np.ndarray) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch({"ids": self._ids[idx]}, self._y[idx])

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.inputs["ids"])


def direct_metrics(task: Task, model: nn.Module, split: str = "eval") -> Metrics:
    """Metrics from task.logits over the split, computed here without the evaluator."""
    with torch.no_grad():
        pairs = [(task.logits(model, b), b.labels) for b in task.batches(split)]
    return metrics_from_logits(torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The toy model needs no parallelism; 2 threads on 2 shared cores spin against other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def task() -> ToyTask:
    return ToyTask()


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = {"task": "toy", "steps": 40, "batch_size": 16, "lr": 1e-2, "rank": 4}
    return TrainConfig(**(base | kw))  # type: ignore[arg-type]


def test_inactive_adapters_get_no_grad_and_adamw_leaves_them_alone(task: ToyTask) -> None:
    model = task.build_model()
    adapter = fresh_adapter(
        model, task.default_targets(), rank=4, alpha=8, generator=torch.Generator().manual_seed(0)
    )
    handle = inject(model, adapter, trainable=True)
    players = make_players(handle.modules_of(), "layer")
    opt = torch.optim.AdamW(handle.parameters(), lr=1e-2, weight_decay=0.1)
    batch = task.train_batch(np.arange(32))
    for _ in range(3):  # all on: every adapter gets moments
        handle.set_gates(players.gates(np.ones(len(players), dtype=bool)))
        train_step(task, model, opt, batch)
    off = players.members[0]
    mask = np.array([False] + [True] * (len(players) - 1))
    handle.set_gates(players.gates(mask))
    assert all(
        handle.get_gates()[m] == 0.0 and isinstance(handle.get_gates()[m], float) for m in off
    )

    def snapshot(names: tuple[str, ...]) -> list[torch.Tensor]:
        out = []
        for n in names:
            w = handle.layers[n]
            for prm in (w.lora_A["default"], w.lora_B["default"]):
                out.append(prm.detach().clone())
                st = opt.state[prm]
                out += [st["exp_avg"].clone(), st["exp_avg_sq"].clone(), st["step"].clone()]
        return out

    before_off = snapshot(off)
    before_on = snapshot(players.members[1])
    for _ in range(2):
        train_step(task, model, opt, batch)
        for n in off:
            assert handle.layers[n].lora_A["default"].grad is None
            assert handle.layers[n].lora_B["default"].grad is None
        for n in players.members[1]:
            assert handle.layers[n].lora_A["default"].grad is not None
    after_off = snapshot(off)
    assert all(torch.equal(a, b) for a, b in zip(before_off, after_off, strict=True))
    after_on = snapshot(players.members[1])
    assert not all(torch.equal(a, b) for a, b in zip(before_on, after_on, strict=True))


def test_method_lora_keeps_every_group_on(task: ToyTask) -> None:
    res = train(_cfg(method="lora", steps=10), task=task, progress=False)
    assert all(r.n_active == N_LAYERS and r.p == 1.0 for r in res.log)
    assert res.record["groups"]["names"] == ["layer0", "layer1", "layer2"]


def test_coto_log_follows_the_schedule(task: ToyTask) -> None:
    res = train(_cfg(steps=40, group="module"), task=task, progress=False)
    n = len(task.default_targets())
    assert len(res.log) == 40
    assert all(1 <= r.n_active <= n for r in res.log)
    assert res.log[0].p == pytest.approx(0.1)
    assert res.log[15].p == pytest.approx(0.1 + 0.9 * 15 / 30)
    assert all(r.p == 1.0 and r.n_active == n for r in res.log[30:])
    assert np.mean([r.n_active for r in res.log[:10]]) < n / 2
    names = {g for r in res.log for g in r.active_groups.split()}
    assert names == set(task.default_targets())


def test_training_beats_zero_shot_on_the_toy_task(task: ToyTask) -> None:
    for method in ("coto", "lora"):
        res = train(_cfg(method=method, steps=60), task=task, progress=False)
        assert res.metrics.loss < res.zero_shot.loss - 0.2, (method, res.metrics, res.zero_shot)
        assert res.metrics.accuracy > res.zero_shot.accuracy + 0.15, (
            method,
            res.metrics,
            res.zero_shot,
        )


def test_recorded_metrics_match_a_direct_evaluation(task: ToyTask) -> None:
    res = train(_cfg(steps=3), task=task, progress=False)
    assert res.zero_shot.as_dict() == pytest.approx(
        direct_metrics(task, task.build_model()).as_dict()
    )
    trained = task.build_model()
    inject(trained, res.adapter)
    assert res.metrics.as_dict() == pytest.approx(direct_metrics(task, trained).as_dict())


def test_same_seed_same_adapter_bits(task: ToyTask, tmp_path) -> None:
    cfg = _cfg(steps=15, lora_dropout=0.1)
    a = train(cfg, task=task, progress=False)
    b = train(cfg, task=task, progress=False)
    c = train(_cfg(steps=15, lora_dropout=0.1, seed=1), task=task, progress=False)
    for name in a.adapter.modules:
        assert torch.equal(a.adapter[name].A, b.adapter[name].A)
        assert torch.equal(a.adapter[name].B, b.adapter[name].B)
    assert any(not torch.equal(a.adapter[n].A, c.adapter[n].A) for n in a.adapter.modules)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    wa = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    wb = (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    assert wa == wb
    assert [r.active_groups for r in a.log] == [r.active_groups for r in b.log]


def test_training_leaves_global_torch_rng_alone(task: ToyTask) -> None:
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    train(_cfg(steps=2, lora_dropout=0.2), task=task, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_resolve_targets(task: ToyTask) -> None:
    model = task.build_model()
    d = task.default_targets()
    assert resolve_targets(model, d, None) == d
    qk = resolve_targets(model, d, ["q", "k"])
    assert qk == [
        f"encoder.layer.{i}.attention.self.{k}" for i in range(N_LAYERS) for k in ("query", "key")
    ]
    o = resolve_targets(model, d, ["o"])
    assert o == [f"encoder.layer.{i}.attention.output.dense" for i in range(N_LAYERS)]
    full = "encoder.layer.1.attention.self.value"
    assert resolve_targets(model, d, [full, "q"]) == sorted(
        [full] + [f"encoder.layer.{i}.attention.self.query" for i in range(N_LAYERS)],
        key=lambda n: (int(n.split(".")[2]), n),
    )
    with pytest.raises(OptionError, match="kinds available: q, k, v, o"):
        resolve_targets(model, d, ["up"])
    with pytest.raises(OptionError, match="no nn.Linear"):
        resolve_targets(model, d, ["encoder.layer.9.attention.self.query"])


def test_train_with_kind_targets_and_module_groups(task: ToyTask) -> None:
    res = train(_cfg(steps=4, targets=("k",), group="module"), task=task, progress=False)
    assert sorted(res.adapter.modules) == [
        f"encoder.layer.{i}.attention.self.key" for i in range(N_LAYERS)
    ]
    assert len(res.record["groups"]["names"]) == N_LAYERS


def test_epoch_sampler_covers_each_epoch() -> None:
    s = EpochSampler(10, 4, np.random.default_rng(0))
    idx = np.concatenate([s.next() for _ in range(5)])  # 20 = two epochs
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
    small = EpochSampler(3, 8, np.random.default_rng(0))
    assert small.batch_size == 3 and sorted(small.next()) == [0, 1, 2]


@pytest.mark.parametrize(
    "kw",
    [
        {"steps": 0},
        {"lr": -1.0},
        {"method": "dropout"},
        {"schedule": "cubic"},
        {"group": "tower"},
        {"lora_dropout": 1.0},
        {"targets": ()},
        {"schedule": "exponential", "p_start": 0.0},
    ],
)
def test_config_rejects_bad_values(kw: dict) -> None:
    with pytest.raises(OptionError):
        _cfg(**kw)


def test_config_round_trips_through_its_dict() -> None:
    cfg = _cfg(targets=("q", "v"), task_variant={"shots": 8}, schedule="sine")
    assert TrainConfig.from_dict(cfg.as_dict()) == cfg


def test_saved_run_loads_in_peft_with_the_same_outputs(task: ToyTask, tmp_path) -> None:
    peft = pytest.importorskip("peft")
    res = train(_cfg(steps=20), task=task, progress=False)
    out = res.save(tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "coto.json",
        "train_log.csv",
    ]
    batch = task.batches("eval")[0]
    gated_model = task.build_model()
    inject(gated_model, res.adapter)
    with torch.no_grad():
        ours = task.logits(gated_model, batch)
        base = task.logits(task.build_model(), batch)
        pm = peft.PeftModel.from_pretrained(task.build_model(), str(out)).eval()
        theirs = pm(batch.inputs["ids"])
    assert not torch.allclose(ours, base, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_save_refuses_an_existing_directory(task: ToyTask, tmp_path) -> None:
    from coto_tools.errors import OutputExistsError

    res = train(_cfg(steps=2), task=task, progress=False)
    (tmp_path / "run").mkdir()
    with pytest.raises(OutputExistsError):
        res.save(tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []
    res.save(tmp_path / "run", force=True)
    assert (tmp_path / "run" / "coto.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary sibling left
