"""What the stages of a reproduction share (coto_tools.reproduce.workbench): each reuse must give
the numbers of recomputing, bit for bit."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from coto_tools.adapters import load_adapter
from coto_tools.errors import CotoError, ShapleyError
from coto_tools.reproduce import ReproduceConfig, reproduce
from coto_tools.reproduce.workbench import BranchView, Workbench, same_adapter
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.runtime.gated import inject
from coto_tools.tasks import get_task
from coto_tools.train import TrainConfig
from coto_tools.train import loop as train_loop

CFG = dict(task="tiny", steps=12, batch_size=8, lr=1e-2, rank=4, alpha=8.0, eval_split="quick")


def _cfg(method: str, seed: int) -> TrainConfig:
    return TrainConfig(method=method, seed=seed, **CFG)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained() -> dict[str, train_loop.TrainResult]:
    """Two tiny runs trained alone (own task, own model, own zero-shot)."""
    return {m: train_loop.train(_cfg(m, 1), progress=False) for m in ("lora", "coto")}


def test_shared_task_model_and_zero_shot_give_the_same_run(
    trained: dict[str, train_loop.TrainResult],
) -> None:
    bench = Workbench()
    task = bench.get_task("tiny")
    assert bench.get_task("tiny") is task and bench.get_task("tiny", seed=1) is not task
    model = bench.model(task)
    first = train_loop.train(_cfg("lora", 1), task=task, model=model, progress=False)
    bench.record_zero_shot(task, "quick", first.zero_shot)
    zs = bench.zero_shot(task, "quick")
    assert zs is not None and bench.zero_shot(task, "eval") is None
    second = train_loop.train(
        _cfg("coto", 1), task=task, model=bench.model(task), zero_shot=zs, progress=False
    )
    assert bench.models_built == 1 and bench.tasks_built == 2
    for shared, alone in ((first, trained["lora"]), (second, trained["coto"])):
        assert same_adapter(shared.adapter, alone.adapter)
        assert shared.metrics == alone.metrics
        assert shared.zero_shot == alone.zero_shot  # reused == recomputed, exactly
        assert shared.log == alone.log
    # the shared model came back as built: same weights as a freshly built one
    fresh = get_task("tiny").build_model().state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in bench.model(task).state_dict().items())


def test_a_model_still_carrying_adapters_is_refused(
    trained: dict[str, train_loop.TrainResult],
) -> None:
    bench = Workbench()
    task = bench.get_task("tiny")
    handle = inject(bench.model(task), trained["lora"].adapter)
    with pytest.raises(CotoError, match="still carries adapters"):
        bench.model(task)
    handle.remove()
    assert bench.model(task) is handle.model
    with pytest.raises(CotoError, match="not a task of this workbench"):
        bench.model(get_task("tiny"))


def test_branch_of_a_shared_evaluator_equals_its_own_evaluator(
    trained: dict[str, train_loop.TrainResult],
) -> None:
    bench = Workbench()
    task = bench.get_task("tiny")
    ads = {m: r.adapter for m, r in trained.items()}
    shared = bench.runs_evaluator(task, ads, "quick")
    assert bench.runs_evaluator(task, ads, "quick") is shared  # kept open, reused
    names = list(ads["lora"].modules)
    configs = [dict.fromkeys(names, 1.0), {}, {n: 1.0 for n in names[:3]}, {names[-1]: 1.0}]
    for m, ad in ads.items():
        assert bench.branch_of(shared, ad) == m  # found by its weights
        view = BranchView(shared, m)
        alone = Evaluator(get_task("tiny"), ad, split="quick")
        try:
            for c in configs:
                assert view.value(c) == alone.value(c)
        finally:
            alone.close()
    with pytest.raises(CotoError, match="names a branch"):
        view.value({("lora", names[0]): 1.0})
    other = bench.evaluator(task, ads, "quick")  # closes the shared one: the model is free
    assert other is not shared and other.model is shared.model
    other.close()
    bench.close()


def test_shapley_on_a_shared_evaluator_equals_its_own(
    tmp_path: Path, trained: dict[str, train_loop.TrainResult]
) -> None:
    from coto_tools.shapley.run import ShapleyConfig, shapley_run

    for m, r in trained.items():
        r.save(tmp_path / m)
    cfg = ShapleyConfig(players="layer", estimator="exact", split="quick")
    bench = Workbench()
    task = bench.get_task("tiny")
    shared = bench.runs_evaluator(task, {m: load_adapter(tmp_path / m) for m in trained}, "quick")
    for m in trained:
        own = shapley_run(tmp_path / m, replace(cfg, out=tmp_path / f"own-{m}"))
        via = shapley_run(
            tmp_path / m,
            replace(cfg, out=tmp_path / f"via-{m}"),
            evaluator=shared,
            branch=m,
            figures=False,
        )
        for metric, res in own.results.items():
            assert res.values.tolist() == via.results[metric].values.tolist()
            assert (res.v_full, res.v_empty) == (
                via.results[metric].v_full,
                via.results[metric].v_empty,
            )
        assert (tmp_path / f"own-{m}" / "shapley_heatmap.png").is_file()
        assert not (tmp_path / f"via-{m}" / "shapley_heatmap.png").exists()
    with pytest.raises(ShapleyError, match="not the adapter of"):
        shapley_run(tmp_path / "lora", replace(cfg, out=tmp_path / "x"), evaluator=shared,
                    branch="coto")  # fmt: skip


def test_reproduce_numbers_equal_the_plain_commands(tmp_path: Path) -> None:
    """Pruning and Shapley through the shared evaluator (Shapley first) give what plain
    ``run_prune`` / ``shapley_run`` give on the same checkpoints."""
    from coto_tools.prune import PruneConfig, run_prune
    from coto_tools.shapley.run import ShapleyConfig, shapley_run

    out = tmp_path / "r"
    reproduce(ReproduceConfig(out=out, task="tiny", quick=True, steps=10), progress=False)
    prune = json.loads((out / "prune" / "prune_summary.json").read_text())
    shap = json.loads((out / "shapley" / "shapley_summary.json").read_text())
    dirs = [out / "train" / r["run"] for r in prune["runs"]]
    plain = run_prune(
        PruneConfig(
            checkpoints=tuple(dirs), split=prune["split"], curves=False, rank_sweep=False
        )  # fmt: skip
    )
    for row, c in zip(prune["runs"], plain.checkpoints, strict=True):
        assert row["full"] == c.full.as_dict() and row["empty"] == c.empty.as_dict()
        assert row["strategies"] == {s.strategy.name: s.metrics.as_dict() for s in c.strategies}
    for row in shap["runs"]:
        res = shapley_run(
            out / "train" / row["run"],
            ShapleyConfig(
                players=shap["players"],
                metric=shap["metric"],
                estimator=shap["estimator"],
                split=shap["split"],
                out=tmp_path / row["run"],
            ),  # fmt: skip
        )
        assert res.primary.values.tolist() == row["values"]
