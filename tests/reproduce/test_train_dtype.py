"""``TrainConfig.dtype`` and resuming a reproduction: run directories written before the field
existed (no ``dtype`` in ``coto.json``'s config, nor in the stage key) are reused as float32
runs, and a run trained in another dtype is refused, never silently reused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from coto_tools.errors import OptionError
from coto_tools.reproduce.config import ReproduceConfig
from coto_tools.reproduce.training import _reusable, planned_runs, train_stage
from coto_tools.train import loop


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _counters() -> dict[str, int]:
    return {"trained": 0, "evaluations": 0, "stages_run": 0, "stages_skipped": 0}


def _as_before_the_field(train_dir: Path) -> None:
    """Rewrite every run's ``coto.json`` and the stage's ``done.json`` as coto-tools wrote them
    before ``TrainConfig.dtype`` existed: no ``dtype`` anywhere."""
    for rec_path in train_dir.glob("*/coto.json"):
        rec = json.loads(rec_path.read_text())
        rec.pop("dtype", None)
        rec["config"].pop("dtype", None)
        rec_path.write_text(json.dumps(rec, indent=2) + "\n")
    done = train_dir / "done.json"
    rec = json.loads(done.read_text())
    for cfg in rec["key"]["runs"].values():
        cfg.pop("dtype", None)
    done.write_text(json.dumps(rec, indent=2) + "\n")


def test_old_runs_resume_and_another_dtype_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ReproduceConfig(out=tmp_path / "r", task="tiny", quick=True, seeds=1, steps=3)
    preset = config.preset()
    first = _counters()
    train_stage(config, preset, progress=False, counters=first)
    assert first["trained"] == 2
    train_dir = tmp_path / "r" / "train"
    _as_before_the_field(train_dir)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("an old float32 run must be reused, not retrained")

    monkeypatch.setattr(loop, "train", boom)
    again = _counters()
    train_stage(config, preset, progress=False, counters=again)  # the finished stage's key
    assert (again["trained"], again["stages_skipped"]) == (0, 1)
    (train_dir / "done.json").unlink()  # as if killed: each run directory is compared
    again = _counters()
    train_stage(config, preset, progress=False, counters=again)
    assert (again["trained"], again["stages_run"]) == (0, 1)

    # a planned bfloat16 run does not reuse an old (float32) run directory ...
    name, _, cfg = planned_runs(config, preset)[0]
    assert _reusable(train_dir / name, cfg, False)
    with pytest.raises(OptionError, match=r"trained with other settings \(dtype differ"):
        _reusable(train_dir / name, replace(cfg, dtype="bfloat16"), False)
    # ... and a bfloat16 run directory is not taken for the planned float32 run
    rec_path = train_dir / name / "coto.json"
    rec = json.loads(rec_path.read_text())
    rec["config"]["dtype"] = "bfloat16"
    rec_path.write_text(json.dumps(rec))
    (train_dir / "done.json").unlink()
    with pytest.raises(OptionError, match=r"trained with other settings \(dtype differ"):
        train_stage(config, preset, progress=False, counters=_counters())


def test_a_given_base_model_in_another_dtype_is_refused() -> None:
    """reproduce hands its shared (float32) base model to ``train``: a config asking another
    dtype is refused rather than trained in the wrong one."""
    from coto_tools.tasks import get_task
    from coto_tools.train import TrainConfig

    task = get_task("tiny")
    with pytest.raises(OptionError, match="base model is float32, the config asks for bfloat16"):
        loop.train(
            TrainConfig(task="tiny", steps=1, dtype="bfloat16"),
            task=task,
            model=task.build_model(),
            progress=False,
        )
