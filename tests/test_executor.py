"""The executor layer without Ray: configs, specs, the recorder, and the local executor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coto_tools.adapters.io import save_adapter
from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.errors import OptionError
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.runtime.executor import (
    EvaluatorSpec,
    ExecutorConfig,
    ExecutorKind,
    Recorder,
    make_evaluator,
)
from coto_tools.tasks import get_task


def random_adapter(seed: int, *, model_seed: int = 0) -> LoraAdapter:
    """Random non-zero factors on the tiny task's default targets."""
    tiny = get_task("tiny", model_seed=model_seed)
    model = tiny.build_model()
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for t in tiny.default_targets():
        lin = model.get_submodule(t)
        mods[t] = LoraModule(
            0.3 * torch.randn(4, lin.in_features, generator=g),
            0.3 * torch.randn(lin.out_features, 4, generator=g),
            alpha=8.0,
        )
    return LoraAdapter(mods)


def run_dir(root: Path, name: str, seed: int, *, variant: dict | None = None) -> Path:
    """A run directory as ``coto-tools train`` writes it (random factors)."""
    rec = {
        "format": "coto-tools/train-run",
        "task": "tiny",
        "task_variant": variant or {},
        "method": "lora",
        "seed": seed,
        "config": {},
    }
    path = root / name
    ad = random_adapter(seed, model_seed=(variant or {}).get("model_seed", 0))
    save_adapter(ad, path, extra_files={"coto.json": json.dumps(rec)})
    return path


def test_executor_config_validation() -> None:
    assert ExecutorConfig().is_local
    assert ExecutorConfig(kind="ray").kind is ExecutorKind.ray  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="allowed: local, ray"):
        ExecutorConfig(kind="dask")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="--workers must be >= 1"):
        ExecutorConfig(kind=ExecutorKind.ray, workers=0)
    with pytest.raises(OptionError, match="need --executor ray"):
        ExecutorConfig(workers=2)
    with pytest.raises(OptionError, match="max_retries"):
        ExecutorConfig(kind=ExecutorKind.ray, max_retries=-1)


def test_spec_validation_and_paths(tmp_path: Path) -> None:
    ad = random_adapter(1)
    with pytest.raises(OptionError, match="no adapters"):
        EvaluatorSpec("tiny", ())
    with pytest.raises(OptionError, match="unique"):
        EvaluatorSpec("tiny", (("a", ad), ("a", ad)))
    with pytest.raises(OptionError, match="split 'dev'"):
        EvaluatorSpec("tiny", (("a", ad),), split="dev")
    with pytest.raises(OptionError, match="unknown evaluator option"):
        EvaluatorSpec("tiny", (("a", ad),), evaluator_options={"bogus": 1})
    path = run_dir(tmp_path, "r", 1)
    spec = EvaluatorSpec("tiny", {"default": path})  # a mapping and a Path are normalised
    assert spec.adapters == (("default", str(path)),)
    loaded = spec.load_adapters()["default"]
    assert set(loaded.modules) == set(ad.modules)


def test_local_executor_equals_a_plain_evaluator() -> None:
    ad = random_adapter(2)
    spec = EvaluatorSpec('tiny:{"model_seed":1}', (("default", ad),), split="quick")
    ev = make_evaluator(spec)
    assert isinstance(ev, Evaluator)
    plain = Evaluator(get_task("tiny", model_seed=1), ad, split="quick")
    cfg = dict.fromkeys(list(ad.modules)[:3], 1.0)
    assert ev.value(cfg) == plain.value(cfg)
    assert ev.value(cfg) != Evaluator(get_task("tiny"), ad, split="quick").value(cfg)


def test_recorder_lists_configurations_in_order() -> None:
    rec = Recorder()
    m = rec.value({"a": 1.0})
    rec.value_batch([{"b": 0.0}, {"a": 0.5}])
    assert rec.configs == [{"a": 1.0}, {"b": 0.0}, {"a": 0.5}]
    assert m.n == 0


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from coto_tools.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("command", ["shapley", "prune", "lmc"])
def test_cli_workers_need_ray_executor(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = run_dir(tmp_path, "a", 1), run_dir(tmp_path, "b", 2)
    args = [command, str(a)] + ([str(b)] if command == "lmc" else [])
    code, _, err = run_cli([*args, "--workers", "2", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--ray-address and --workers need --executor ray" in err
    code, _, err = run_cli([*args, "--executor", "dask"], capsys)
    assert code == 2 and "dask" in err
    assert not (tmp_path / "o").exists()


def test_ray_executor_without_ray_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    a = run_dir(tmp_path, "a", 1)
    args = ["prune", str(a), "--split", "quick", "--out", str(tmp_path / "o"), "--quiet"]
    code, _, err = run_cli([*args, "--executor", "ray"], capsys)
    assert code == 2 and "pip install 'coto-tools[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
