"""``reproduce --device``: the stages' evaluators run on the device, training stays on the CPU
model, and ``--device cpu`` gives the default run's numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from coto_tools.cli import main
from coto_tools.reproduce import ReproduceConfig, reproduce
from coto_tools.reproduce.workbench import Workbench, same_adapter
from coto_tools.tasks import get_task
from coto_tools.train import TrainConfig
from coto_tools.train import loop as train_loop

CUDA = torch.cuda.is_available()
STEPS = 10
# what the evaluation stages write (training is shared: copied from the default run)
SUMMARIES = (
    "merge/merge.json",
    "prune/prune_summary.json",
    "shapley/shapley_summary.json",
    "lmc/lmc_summary.json",
)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library's default reproduction (no executor: evaluations on the CPU model)."""
    out = tmp_path_factory.mktemp("repro_device") / "default"
    reproduce(ReproduceConfig(out=out, task="tiny", quick=True, steps=STEPS), progress=False)
    return out


def _with_training_of(default_run: Path, out: Path) -> Path:
    """A fresh reproduction dir holding the default run's finished training (stages redone)."""
    out.mkdir(parents=True)
    shutil.copytree(default_run / "train", out / "train")
    shutil.copy(default_run / "reproduce.json", out / "reproduce.json")  # for the output guard
    return out


def _summaries(root: Path) -> dict[str, Any]:
    out = {name: json.loads((root / name).read_text()) for name in SUMMARIES}
    out["claims"] = json.loads((root / "claims.json").read_text())["runs"][0]["claims"]
    return out


def _cli(out: Path, *extra: str) -> None:
    main(["reproduce", "--task", "tiny", "--quick", "--steps", str(STEPS), "--quiet",
          "--out", str(out), *extra])  # fmt: skip


def test_device_cpu_equals_the_default_run(
    default_run: Path, tmp_path: Path, devices: list[object]
) -> None:
    out = _with_training_of(default_run, tmp_path / "cpu")
    _cli(out, "--device", "cpu")
    meta = json.loads((out / "reproduce.json").read_text())
    assert meta["device"] == "cpu" and "--device cpu" in meta["command"]
    assert meta["invocations"][-1]["trained"] == 0  # training reused: only stages were redone
    # every stage evaluator got the device (the factor-space LMC one: the resolved device)
    assert devices and {str(d) for d in devices} == {"cpu"}
    assert _summaries(out) == _summaries(default_run)  # same numbers, bit for bit


def test_evaluation_model_is_not_the_training_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off the CPU the evaluators get a second base model on the device; the one training
    uses stays on the CPU. (``meta`` stands in for a GPU: only models are placed, nothing
    is evaluated.)"""
    cpu = Workbench(device="cpu")
    task = cpu.get_task("tiny")
    assert cpu.eval_model(task) is cpu.model(task) and cpu.models_built == 1
    bench = Workbench()
    bench.device = torch.device("meta")
    task = bench.get_task("tiny")
    train_model, eval_model = bench.model(task), bench.eval_model(task)
    assert eval_model is not train_model and bench.eval_model(task) is eval_model
    assert next(eval_model.parameters()).device.type == "meta"
    assert all(p.device.type == "cpu" for p in train_model.parameters())
    assert bench.models_built == 2
    fresh = get_task("tiny").build_model().state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in train_model.state_dict().items())
    bench.close()


@pytest.mark.skipif(not CUDA, reason="needs CUDA (torch.cuda.is_available() is False here)")
def test_cuda_workbench_trains_on_the_cpu() -> None:
    """Evaluating on CUDA before and after training leaves training's numbers unchanged."""
    cfg = TrainConfig(method="coto", seed=1, task="tiny", steps=12, batch_size=8, lr=1e-2,
                      rank=4, alpha=8.0, eval_split="quick")  # fmt: skip
    alone = train_loop.train(cfg, progress=False)
    bench = Workbench(device="cuda")
    task = bench.get_task("tiny")
    ev = bench.runs_evaluator(task, {"a": alone.adapter}, "quick")
    gpu_value = ev.value({("a", m): 1.0 for m in alone.adapter.modules})
    shared = train_loop.train(cfg, task=task, model=bench.model(task), progress=False)
    assert all(p.device.type == "cpu" for p in bench.model(task).parameters())
    assert next(bench.eval_model(task).parameters()).device.type == "cuda"
    assert same_adapter(shared.adapter, alone.adapter) and shared.log == alone.log
    assert gpu_value.loss == pytest.approx(alone.metrics.loss, abs=1e-4)
    bench.close()


@pytest.mark.skipif(not CUDA, reason="needs CUDA (torch.cuda.is_available() is False here)")
def test_device_cuda_agrees_with_the_cpu(default_run: Path, tmp_path: Path) -> None:
    """``--device cuda``: the stages' losses and log-probabilities agree with the default (CPU)
    run's up to float rounding (1e-4, as the evaluator's own GPU test)."""
    out = _with_training_of(default_run, tmp_path / "cuda")
    _cli(out, "--device", "cuda")
    assert json.loads((out / "reproduce.json").read_text())["device"].startswith("cuda")
    gpu = json.loads((out / "prune/prune_summary.json").read_text())["runs"]
    cpu = json.loads((default_run / "prune/prune_summary.json").read_text())["runs"]
    for g, c in zip(gpu, cpu, strict=True):
        for key in ("full", "empty"):
            for metric in ("loss", "logprob"):
                assert g[key][metric] == pytest.approx(c[key][metric], abs=1e-4)
        for name, m in c["strategies"].items():
            assert g["strategies"][name]["loss"] == pytest.approx(m["loss"], abs=1e-4)
    gl = json.loads((out / "lmc/lmc_summary.json").read_text())["pairs"]
    cl = json.loads((default_run / "lmc/lmc_summary.json").read_text())["pairs"]
    for g, c in zip(gl, cl, strict=True):
        for sp, curve in c["curves"].items():
            assert g["curves"][sp]["loss"] == pytest.approx(curve["loss"], abs=1e-4)
