"""``--executor ray`` on a local 2-CPU Ray cluster: the same numbers as the local executor for
Shapley, pruning and LMC, also when a worker is killed mid-run, and ``--dtype bfloat16`` on a
tiny LLaMA adapter. One cluster for the whole module (ray.init took 6-9 s here, on a shared
2-core machine). Skipped without Ray."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'coto-tools[ray]')")

from test_executor import random_adapter, run_dir  # noqa: E402  (tests/ is on sys.path)

from coto_tools.lmc.run import LmcConfig, Mode, run_lmc  # noqa: E402
from coto_tools.prune import PruneConfig, run_prune  # noqa: E402
from coto_tools.runtime.executor import EvaluatorSpec, ExecutorConfig, ExecutorKind  # noqa: E402
from coto_tools.runtime.ray_executor import RayEvaluator  # noqa: E402
from coto_tools.shapley.run import ShapleyConfig, shapley_run  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RAY = ExecutorConfig(kind=ExecutorKind.ray, workers=2)


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"ray.init: {time.perf_counter() - t0:.1f} s")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray_runs")
    return {
        "a": run_dir(root, "a", 1, variant={"model_seed": 2}),  # workers must rebuild this task
        "b": run_dir(root, "b", 2),
        "c": run_dir(root, "c", 3),
    }


def _shapley(ckpt: Path, out: Path, executor: ExecutorConfig | None) -> Any:
    cfg = ShapleyConfig(
        players="module", estimator="permutation", permutations=2, seed=3, split="quick",
        out=out, batch_size=4,
    )  # fmt: skip
    return shapley_run(ckpt, cfg, executor=executor)


def _same_shapley(a: Any, b: Any) -> None:
    for m, ra in a.results.items():
        rb = b.results[m]
        assert np.array_equal(ra.values, rb.values), m
        assert np.array_equal(ra.std_errors, rb.std_errors), m
        assert ra.evaluations == rb.evaluations
    assert (a.out / "evaluations.jsonl").read_text() == (b.out / "evaluations.jsonl").read_text()


def test_shapley_equals_local(runs: dict[str, Path], tmp_path: Path) -> None:
    local = _shapley(runs["a"], tmp_path / "local", None)
    remote = _shapley(runs["a"], tmp_path / "ray", RAY)
    assert remote.summary["evaluations_computed"] == local.summary["evaluations_computed"] > 8
    _same_shapley(local, remote)
    assert abs(local.primary.v_full - local.primary.v_empty) > 1e-3  # a real game


def test_worker_killed_mid_run_is_replaced(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _shapley(runs["a"], tmp_path / "local", None)
    state = {"calls": 0, "killed": 0, "restarts": 0}
    submit, close = RayEvaluator._submit, RayEvaluator.close

    def killing_submit(self: RayEvaluator, method: str, i: int, chunk: list[Any]) -> Any:
        ref = submit(self, method, i, chunk)
        state["calls"] += 1
        if state["calls"] == 5 and i == 0:  # second batch: the chunk is in flight
            ray.kill(self._actors[0], no_restart=True)
            state["killed"] += 1
        return ref

    def recording_close(self: RayEvaluator) -> None:
        state["restarts"] = self.n_restarts
        close(self)

    monkeypatch.setattr(RayEvaluator, "_submit", killing_submit)
    monkeypatch.setattr(RayEvaluator, "close", recording_close)
    remote = _shapley(runs["a"], tmp_path / "ray", RAY)
    assert state["killed"] == 1 and state["restarts"] == 1
    _same_shapley(local, remote)


def test_prune_equals_local(runs: dict[str, Path], tmp_path: Path) -> None:
    def cfg(out: str) -> PruneConfig:
        return PruneConfig(
            checkpoints=(runs["b"],), strategies=("all", "everyother", "low", "random:0.5"),
            split="quick", steps=3, seeds=(0,), ranks=(4, 1), out=tmp_path / out,
        )  # fmt: skip

    local = run_prune(cfg("local"))
    remote = run_prune(cfg("ray"), executor=RAY)
    assert remote.checkpoints == local.checkpoints  # every Metrics bit for bit
    assert local.checkpoints[0].full != local.checkpoints[0].empty


def test_lmc_equals_local(runs: dict[str, Path], tmp_path: Path) -> None:
    def cfg(out: str) -> LmcConfig:
        return LmcConfig(groups=((runs["b"], runs["c"]),), points=3, split="quick",
                         out=tmp_path / out)  # fmt: skip

    local = run_lmc(cfg("local"))
    remote = run_lmc(cfg("ray"), executor=RAY)
    assert remote.results == local.results and len(local.results[0].curves) == 2
    assert remote.evaluations == local.evaluations


def test_lmc_plane_equals_local(runs: dict[str, Path], tmp_path: Path) -> None:
    def cfg(out: str) -> LmcConfig:
        trio = (runs["b"], runs["c"], runs["a"])
        return LmcConfig(groups=(trio,), mode=Mode.plane, grid=3, split="quick",
                         task="tiny", out=tmp_path / out)  # fmt: skip

    local = run_lmc(cfg("local"))
    remote = run_lmc(cfg("ray"), executor=RAY)
    assert remote.plane is not None and local.plane is not None
    assert remote.plane.metrics == local.plane.metrics
    assert remote.plane.weights == local.plane.weights


def test_ray_evaluator_interface(runs: dict[str, Path]) -> None:
    from coto_tools.adapters.players import make_players
    from coto_tools.runtime.evaluator import Evaluator
    from coto_tools.tasks import get_task

    ad = random_adapter(5)
    spec = EvaluatorSpec("tiny", (("default", ad),), split="quick")
    local = Evaluator(get_task("tiny"), ad, split="quick")
    ev = RayEvaluator(spec, RAY)
    try:
        players = make_players(ad.modules, "layer")
        masks = [[True, False], [False, True], [True, True], [True, False]]
        assert ev.value_batch([ev.mask_config(players, m) for m in masks]) == [
            local.value_mask(players, m) for m in masks
        ]
        assert ev.n_forward == 3 and ev.workers == 2
        assert ev.devices == ["cpu", "cpu"]  # no GPU in this cluster: actors evaluate on CPU
        assert ev.key({}) == local.key({}) and ev.branches == local.branches
        assert ev.value({}) == local.value({})
        assert np.array_equal(ev.labels, local.labels.numpy())
        per = ev.metrics_per_example(dict.fromkeys(ad.modules, 1.0))
        assert np.array_equal(
            per.logprobs, local.metrics_per_example(dict.fromkeys(ad.modules, 1.0)).logprobs
        )
    finally:
        ev.close()


def test_bf16_llama_on_ray_equals_local(tmp_path: Path) -> None:
    """``--dtype`` reaches the workers: a bfloat16 evaluation of a tiny LLaMA adapter on
    prompt/completion data equals the local one, and the workers report the example count
    (issue 18; shares this module's cluster instead of starting its own)."""
    pytest.importorskip("peft")
    import torch
    from test_llm_fixtures import peft_lm_adapter, save_llama
    from test_user_task_fixtures import write_jsonl

    from coto_tools.adapters.io import load_adapter
    from coto_tools.runtime.evaluator import Evaluator
    from coto_tools.tasks import get_task, task_spec

    base = save_llama(tmp_path / "llama")
    ad = load_adapter(peft_lm_adapter(base, tmp_path / "ad", seed=1, targets=("q_proj",)))
    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "the cat", "completion": " sat"}] * 3)
    spec_text = task_spec("user", {"base_model": str(base), "data": str(data)})
    ray_ev = RayEvaluator(
        EvaluatorSpec(spec_text, (("default", ad),)),
        ExecutorConfig(kind=ExecutorKind.ray, workers=1, device="cpu", dtype="bfloat16"),
    )
    local = Evaluator(get_task(spec_text), ad, dtype="bfloat16")
    try:
        full = dict.fromkeys(ad.modules, 1.0)
        assert ray_ev.dtype == local.dtype == torch.bfloat16
        assert ray_ev.value(full) == local.value(full) and ray_ev.value({}) == local.value({})
        assert ray_ev.value(full) != ray_ev.value({})  # the adapter is on in the first
        assert ray_ev.n_examples == local.n_examples == 3
    finally:
        ray_ev.close()
        local.close()


def test_cli_prune_with_ray(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_executor import run_cli

    common = ["prune", str(runs["b"]), "--split", "quick", "--steps", "2", "--seeds", "0",
              "--strategies", "all,low", "--ranks", "4,1", "--quiet"]  # fmt: skip
    code, _, err = run_cli([*common, "--out", str(tmp_path / "local")], capsys)
    assert code == 0, err
    ray_args = ["--executor", "ray", "--ray-address", "auto", "--workers", "2"]
    code, _, err = run_cli([*common, "--out", str(tmp_path / "ray"), *ray_args], capsys)
    assert code == 0, err
    for name in ("prune.csv", "prune_curves.csv", "prune_auc.csv"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    gpu = [*common, "--out", str(tmp_path / "gpu"), *ray_args, "--device", "cuda"]
    code, _, err = run_cli(gpu, capsys)
    assert code == 2 and "--device cuda with --executor ray: the Ray cluster has no GPUs" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_worker_setup_is_a_clear_error() -> None:
    from coto_tools.runtime.executor import ExecutorError

    ad = random_adapter(5)
    too_many = ExecutorConfig(kind=ExecutorKind.ray, workers=3)
    with pytest.raises(ExecutorError, match="--workers 3 needs 3 CPUs; the Ray cluster has 2"):
        RayEvaluator(EvaluatorSpec("tiny", (("default", ad),)), too_many)
    bad = EvaluatorSpec('tiny:{"seed":-1}', (("default", ad),))  # fails only on the workers
    with pytest.raises(
        ExecutorError, match="(?s)could not build the evaluator.*seeds must be >= 0"
    ):
        RayEvaluator(bad, RAY)
    ev = RayEvaluator(EvaluatorSpec("tiny", (("default", ad),), split="quick"), RAY)  # recovers
    try:
        assert ev.value({}).n == 32
    finally:
        ev.close()


def test_reproduce_stages_on_ray_equal_local(tmp_path: Path) -> None:
    """``reproduce --executor ray``: pruning, Shapley and LMC evaluated by Ray workers give the
    numbers of the local run (training and merging stay in the driver)."""
    import json
    import shutil

    from coto_tools.reproduce import ReproduceConfig, reproduce

    local = tmp_path / "local"
    reproduce(ReproduceConfig(out=local, task="tiny", quick=True), progress=False)
    remote = tmp_path / "remote"
    shutil.copytree(local, remote)
    stages = ("prune", "shapley", "lmc")
    for stage in stages:
        (remote / stage / "done.json").unlink()  # recomputed below, on the workers
    result = reproduce(
        ReproduceConfig(out=remote, task="tiny", quick=True, executor=RAY), progress=False
    )
    assert (result.trained, result.stages_run) == (0, len(stages))
    claims = [
        json.loads((d / "claims.json").read_text())["runs"][0]["claims"] for d in (local, remote)
    ]
    assert claims[0] == claims[1]
    for stage in stages:
        for f in sorted((local / stage).glob("*.csv")):
            mine = (remote / stage / f.name).read_text().replace(str(remote), str(local))
            assert f.read_text() == mine, f"{stage}/{f.name}"  # the same but for run paths
