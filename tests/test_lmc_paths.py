"""LMC paths and planes on a small task: exact endpoints, linearity in ΔW, factor = delta when the
A factors are shared, from-zero at scale 0 = the base model, plane corners = the adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.lmc import PointEvaluator, Space, lmc_from_zero, lmc_path, lmc_plane
from coto_tools.lmc.barrier import barriers
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.runtime.gated import inject
from coto_tools.tasks.base import Batch, Metrics, Task

DIM, VOCAB, SEQ, N_CLASSES, N_LAYERS = 8, 30, 6, 3, 2


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList()
        for _ in range(N_LAYERS):
            layer = nn.Module()
            layer.query = nn.Linear(DIM, DIM)
            layer.value = nn.Linear(DIM, DIM)
            self.layers.append(layer)
        self.head = nn.Linear(DIM, N_CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = x + torch.tanh(layer.query(x)) * layer.value(x)
        return self.head(x.mean(dim=1))


class _Task(Task):
    name = "lmc-toy"
    labels = ("a", "b", "c")

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self._ids = torch.randint(0, VOCAB, (96, SEQ), generator=g)
        self._y = torch.randint(0, N_CLASSES, (96,), generator=g)

    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        m = _Net().eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def default_targets(self) -> list[str]:
        return [f"layers.{i}.{k}" for i in range(N_LAYERS) for k in ("query", "value")]

    def batches(self, split: str, batch_size: int = 40) -> list[Batch]:
        return [
            Batch({"ids": self._ids[i : i + batch_size]}, self._y[i : i + batch_size])
            for i in range(0, 96, batch_size)
        ]

    def train_size(self) -> int:
        return 0

    def train_batch(self, indices: np.ndarray) -> Batch:
        raise NotImplementedError

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.inputs["ids"])


@pytest.fixture(scope="module")
def task() -> _Task:
    return _Task()


def _adapter(
    task: Task,
    seed: int,
    *,
    rank: int = 2,
    alpha: float = 4.0,
    A: dict | None = None,
    skip: str | None = None,
) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for t in task.default_targets():
        if t == skip:
            continue
        a = A[t].A if A is not None else 0.5 * torch.randn(rank, DIM, generator=g)
        mods[t] = LoraModule(a, 0.5 * torch.randn(DIM, rank, generator=g), alpha)
    return LoraAdapter(mods, source=f"seed{seed}")


def _own(task: Task, adapter: LoraAdapter | None) -> Metrics:
    """The adapter's own evaluation by the project's evaluator (``None``: the base model)."""
    if adapter is None:
        ev = Evaluator(task, _adapter(task, 99), split="eval")
        return ev.value({})
    ev = Evaluator(task, adapter, split="eval")
    return ev.value(dict.fromkeys(adapter.modules, 1.0))


def _logits_labels(task: Task, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        bs = task.batches("eval")
        return torch.cat([task.logits(model, b).float() for b in bs]), torch.cat(
            [b.labels for b in bs]
        )


@pytest.fixture(scope="module")
def pair(task: _Task) -> tuple[LoraAdapter, LoraAdapter]:
    return _adapter(task, 1), _adapter(task, 2)


def test_endpoints_equal_own_evaluations_exactly(task: _Task, pair) -> None:
    A, B = pair
    res = lmc_path(task, A, B, points=5, space="both")
    for space in (Space.delta, Space.factor):
        assert res.curves[space].at(0.0) == _own(task, A)
        assert res.curves[space].at(1.0) == _own(task, B)
    assert res.endpoints() == {"A": _own(task, A), "B": _own(task, B)}
    assert res.curves[Space.delta].a == (0.0, 0.25, 0.5, 0.75, 1.0)


def test_delta_path_is_linear_in_delta_w(task: _Task, pair) -> None:
    """At a = 0.3 the model equals one injected adapter realising 0.7 ΔW_A + 0.3 ΔW_B exactly
    (rank-concatenated factors, the weights folded into B, scaling 1)."""
    A, B = pair
    cat = {}
    for m in A.modules:
        ma, mb = A[m], B[m]
        cat[m] = LoraModule(
            torch.cat([ma.A, mb.A]),
            torch.cat([0.7 * ma.scaling * ma.B, 0.3 * mb.scaling * mb.B], dim=1),
            alpha=float(ma.rank + mb.rank),  # scaling alpha / r = 1
        )
    ref = task.build_model()
    inject(ref, LoraAdapter(cat))
    want, _ = _logits_labels(task, ref)
    ev = PointEvaluator(task, {"a": A, "b": B})
    ev.value(Space.delta, {"a": 0.7, "b": 0.3})
    got, _ = _logits_labels(task, ev.model)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # and the point is not an endpoint: it differs from both adapters
    ev.value(Space.delta, {"a": 1.0})
    assert (_logits_labels(task, ev.model)[0] - want).abs().max() > 1e-3


def test_identical_adapters_have_no_barrier(task: _Task, pair) -> None:
    A, _ = pair
    res = lmc_path(task, A, A.replace(source="copy"), points=11)
    own = _own(task, A)
    for space, bars in res.barriers().items():
        # accuracy is exactly flat; loss varies only by rounding ((1-a)·g + a·g != g in floats)
        assert bars["accuracy"].height == 0.0
        assert 0.0 <= bars["loss"].height < 1e-6
        for m in res.curves[space].metrics:
            assert m.accuracy == own.accuracy
            assert abs(m.loss - own.loss) < 1e-6


def test_factor_equals_delta_when_A_factors_are_shared(task: _Task, pair) -> None:
    A, _ = pair
    B = _adapter(task, 7, A=dict(A.modules))
    res = lmc_path(task, A, B, points=6, space="both")
    d, f = res.curves[Space.delta], res.curves[Space.factor]
    for md, mf in zip(d.metrics, f.metrics, strict=True):
        assert abs(md.loss - mf.loss) < 1e-5 and abs(md.logprob - mf.logprob) < 1e-5
        assert md.accuracy == mf.accuracy
    # with independent A factors they differ in the interior (the cross terms)
    res2 = lmc_path(task, *pair, points=3, space="both")
    assert (
        abs(res2.curves[Space.delta].at(0.5).loss - res2.curves[Space.factor].at(0.5).loss) > 1e-4
    )


def test_from_zero_scale_zero_is_base_model(task: _Task, pair) -> None:
    A, _ = pair
    res = lmc_from_zero(task, A, points=5, max_scale=1.5, space="both")
    base = _own(task, None)
    for space in (Space.delta, Space.factor):
        c = res.curves[space]
        assert c.at(0.0) == base
        assert c.at(1.0) == _own(task, A)
        assert c.a[-1] == 1.5
    b = res.barriers()[Space.delta]["loss"]
    assert b.start == base.loss and b.end == _own(task, A).loss


def test_plane_corners_equal_the_adapters(task: _Task, pair) -> None:
    A, B = pair
    C = _adapter(task, 3, skip="layers.1.value")
    plane = lmc_plane(task, [A, B, C], grid=3, margin=0.5, names=("x", "y", "z"))
    corners = plane.corners()
    assert corners == {"x": _own(task, A), "y": _own(task, B), "z": _own(task, C)}
    assert plane.one_sided == {"layers.1.value": ("x", "y")}
    assert len(plane.metrics) == len(plane.weights)
    # the edge A->B read off the plane agrees with the path A->B at the same points
    path = lmc_path(task, A, B, points=3, space="delta")
    edge = plane.edge_barriers()["x->y"]["loss"]
    assert edge.height == barriers(path.curves[Space.delta])["loss"].height
    xy = plane.xy()
    assert xy.shape == (len(plane.weights), 2)


def test_one_sided_modules_reported(task: _Task, pair) -> None:
    A, _ = pair
    B = _adapter(task, 4, skip="layers.0.query")
    res = lmc_path(task, A, B, points=3, space="delta", names=("p", "q"))
    assert dict(res.one_sided) == {"layers.0.query": "p"}
    assert res.curves[Space.delta].at(1.0) == _own(task, B)
