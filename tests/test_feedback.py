"""Feedback of the first hour: the Shapley bar advances piece by piece (with a known total, so an
ETA), and ``shapley`` on a folder without an adapter says so first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coto_tools.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from coto_tools.train import TrainConfig, train

    root = tmp_path_factory.mktemp("feedback")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(task="tiny", method="coto", seed=0, steps=4, batch_size=16, lr=2e-2)
        train(cfg, progress=False).save(root / "run")
    finally:
        torch.set_num_threads(before)
    return root / "run"


def test_shapley_bar_advances_within_a_batch(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact on 6 players draws its 62 inner coalitions as one batch; the bar must move every
    ``batch_size`` coalitions inside it, not jump once at the end."""
    from coto_tools.shapley import run as shapley_run_mod
    from coto_tools.shapley.run import ShapleyConfig, shapley_run

    events: list[tuple[str, int]] = []
    totals: list[int | None] = []
    cls = shapley_run_mod._EvalProgress
    orig_init, orig_computed, orig_update = cls.__init__, cls.computed, cls.update

    def init(self, *a, **kw):  # type: ignore[no-untyped-def]
        orig_init(self, *a, **kw)
        totals.append(self.bar.total)

    def computed(self, k):  # type: ignore[no-untyped-def]
        events.append(("piece", k))
        orig_computed(self, k)

    def update(self, info):  # type: ignore[no-untyped-def]
        events.append(("batch", int(info.evaluations)))
        orig_update(self, info)

    monkeypatch.setattr(cls, "__init__", init)
    monkeypatch.setattr(cls, "computed", computed)
    monkeypatch.setattr(cls, "update", update)
    cfg = ShapleyConfig(estimator="exact", split="quick", out=tmp_path / "s", batch_size=8)
    res = shapley_run(tiny_run, cfg, progress=True, figures=False)
    assert res.primary.evaluations == 64 and totals == [64]  # a known total: tqdm shows an ETA
    first_batch = events.index(next(e for e in events if e[0] == "batch"))
    pieces = [k for kind, k in events[:first_batch] if kind == "piece"]
    assert len(pieces) >= 8 and max(pieces) <= 8 and sum(pieces) == 64


def test_shapley_on_a_folder_without_an_adapter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rq").mkdir()
    (tmp_path / "rq" / "reproduce.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main(["shapley", str(tmp_path / "rq"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.count("\n") == 0
    assert "no adapter_model.safetensors" in err and "reproduce folder" in err
    assert "no task known" not in err


def test_unknown_task_lists_only_tasks_a_user_types(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["tasks", "bbc", "--no-zero-shot"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "known tasks: tiny, bbc-topic" in err
    assert "user" not in err and "plugin" not in err
