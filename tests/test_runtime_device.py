"""``--device``: resolution, errors (one line, exit 2), CPU results unchanged, GPU = CPU, and
the device reaching every run module's evaluator explicitly (no context variable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_executor import random_adapter, run_cli, run_dir

from coto_tools.errors import CotoError, OptionError
from coto_tools.runtime.branches import BranchKeys
from coto_tools.runtime.device import DeviceError, check_device, resolve_device
from coto_tools.runtime.evaluator import Evaluator
from coto_tools.runtime.executor import (
    EvaluatorSpec,
    ExecutorConfig,
    ExecutorKind,
    local_device,
    make_evaluator,
)
from coto_tools.tasks import get_task

CUDA = torch.cuda.is_available()


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def configs(modules: list[str]) -> list[dict[str, float]]:
    return [
        {},
        dict.fromkeys(modules, 1.0),
        dict.fromkeys(modules[:3], 1.0),
        {modules[0]: 0.5, modules[-1]: 1.0},
    ]


def test_spelling_and_resolution(no_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [check_device(d) for d in ("auto", "CPU", " cuda ", "cuda:1")] == [
        "auto", "cpu", "cuda", "cuda:1",
    ]  # fmt: skip
    for bad in ("gpu", "cuda:", "cuda:x", "mps", ""):
        with pytest.raises(DeviceError, match="allowed auto, cpu, cuda, cuda:N"):
            check_device(bad)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for req in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError) as info:
            resolve_device(req)
        msg = str(info.value)
        assert f"--device {req}: CUDA is not available" in msg and "\n" not in msg
        assert isinstance(info.value, CotoError)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


def test_auto_is_cpu_here() -> None:
    expected = "cuda" if CUDA else "cpu"
    assert resolve_device("auto").type == expected


def test_explicit_cpu_equals_default() -> None:
    """Default (no device), ``cpu`` and ``auto`` (cpu here) give identical numbers."""
    ad = random_adapter(3)
    mods = list(ad.modules)
    kinds = [None, "cpu"] + ([] if CUDA else ["auto"])
    for reuse in (True, False):
        evs = [
            Evaluator(get_task("tiny"), ad, split="quick", device=d, reuse_prefix=reuse)
            for d in kinds
        ]
        assert all(ev.device == torch.device("cpu") for ev in evs)
        ref = [evs[0].value(c) for c in configs(mods)]
        for ev in evs[1:]:
            assert [ev.value(c) for c in configs(mods)] == ref
            got = ev.metrics_per_example(configs(mods)[2]).logprobs
            assert np.array_equal(got, evs[0].metrics_per_example(configs(mods)[2]).logprobs)
        for ev in evs:
            ev.close()


def test_make_evaluator_and_local_device(no_cuda: None) -> None:
    ad = random_adapter(4)
    spec = EvaluatorSpec("tiny", (("default", ad),), split="quick")
    ev = make_evaluator(spec, ExecutorConfig(device="cpu"))
    assert ev.device == torch.device("cpu")
    assert ev.value({}) == Evaluator(get_task("tiny"), ad, split="quick").value({})
    assert local_device(None) is None
    assert local_device(ExecutorConfig(device="cpu")) == "cpu"
    assert local_device(ExecutorConfig(kind=ExecutorKind.ray, device="cpu")) is None
    assert Evaluator(get_task("tiny"), ad, split="quick").device == torch.device("cpu")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        Evaluator(get_task("tiny"), ad, split="quick", device="cuda")


def test_executor_config_device(no_cuda: None) -> None:
    assert ExecutorConfig().device == "auto"
    with pytest.raises(DeviceError, match="--device cuda: CUDA is not available"):
        ExecutorConfig(device="cuda")
    with pytest.raises(DeviceError, match="allowed auto, cpu, cuda, cuda:N"):
        ExecutorConfig(device="gpu")
    # Ray: the driver need not have CUDA (the workers may); cuda:N is refused
    assert ExecutorConfig(kind=ExecutorKind.ray, device="cuda").device == "cuda"
    with pytest.raises(OptionError, match="each worker uses the GPU Ray gives it"):
        ExecutorConfig(kind=ExecutorKind.ray, device="cuda:1")


def test_ray_gpu_reservation_and_worker_device() -> None:
    from coto_tools.runtime.ray_executor import _gpus_and_device

    def ray(device: str, gpus: float | None = None) -> ExecutorConfig:
        return ExecutorConfig(kind=ExecutorKind.ray, device=device, gpus_per_worker=gpus)

    assert _gpus_and_device(ray("auto"), 0) == (0.0, "cpu")
    assert _gpus_and_device(ray("auto"), 4) == (1.0, "cuda")
    assert _gpus_and_device(ray("cpu"), 4) == (0.0, "cpu")
    assert _gpus_and_device(ray("cuda"), 4) == (1.0, "cuda")
    assert _gpus_and_device(ray("auto", 0.5), 1) == (0.5, "cuda")
    with pytest.raises(DeviceError, match="the Ray cluster has no GPUs"):
        _gpus_and_device(ray("cuda"), 0)
    with pytest.raises(DeviceError, match="needs GPUs per worker"):
        _gpus_and_device(ray("cuda", 0.0), 4)


@pytest.mark.parametrize("command", ["shapley", "prune", "lmc"])
def test_cli_cuda_without_cuda_is_one_line_exit_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_cuda: None
) -> None:
    a, b = run_dir(tmp_path, "a", 1), run_dir(tmp_path, "b", 2)
    args = [command, str(a)] + ([str(b)] if command == "lmc" else [])
    args += ["--split", "quick", "--out", str(tmp_path / "o"), "--quiet"]
    for device, text in (("cuda", "CUDA is not available"), ("gpu", "allowed auto, cpu")):
        code, out, err = run_cli([*args, "--device", device], capsys)
        assert code == 2 and text in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_reproduce_cuda_without_cuda_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_cuda: None
) -> None:
    out = tmp_path / "r"
    args = ["reproduce", "--task", "tiny", "--quick", "--quiet", "--out", str(out)]
    for device, text in (("cuda", "--device cuda: CUDA is not available"),
                         ("cuda:0", "--device cuda:0: CUDA is not available"),
                         ("gpu", "allowed auto, cpu")):  # fmt: skip
        code, _, err = run_cli([*args, "--device", device], capsys)
        assert code == 2 and text in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing trained, nothing written


@pytest.mark.parametrize("command", ["shapley", "prune", "lmc", "lmc-plane"])
def test_cli_device_reaches_every_evaluator_explicitly(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], devices: list[object]
) -> None:
    """``--device cpu`` arrives as each evaluator's ``device`` argument (an evaluator built
    without one would record ``None``); the default is ``auto``."""
    a, b, c = (run_dir(tmp_path, n, s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    args = {
        "shapley": ["shapley", str(a), "--players", "layer", "--estimator", "exact"],
        "prune": ["prune", str(a), "--strategies", "all,low", "--no-curves", "--no-rank-sweep"],
        "lmc": ["lmc", str(a), str(b), "--points", "3"],  # delta and factor space
        "lmc-plane": ["lmc", str(a), str(b), str(c), "--plane", "--grid", "3"],
    }[command]
    args += ["--split", "quick", "--quiet"]
    for device, expected in (("cpu", "cpu"), (None, "auto")):
        devices.clear()
        flags = [] if device is None else ["--device", device]
        code, _, err = run_cli([*args, *flags, "--out", str(tmp_path / f"o-{device}")], capsys)
        assert code == 0, err
        assert devices, "no evaluator was built"
        # the factor-space evaluator takes the delta-space one's resolved device
        assert {str(d) for d in devices} <= {expected, "cpu"} and str(devices[0]) == expected


def test_run_modules_pass_the_executors_device(tmp_path: Path, devices: list[object]) -> None:
    from coto_tools.lmc.run import LmcConfig, run_lmc
    from coto_tools.prune import PruneConfig, run_prune

    a, b = run_dir(tmp_path, "a", 1), run_dir(tmp_path, "b", 2)
    pc = PruneConfig(checkpoints=(a,), split="quick", strategies=("all",), curves=False,
                     rank_sweep=False, out=tmp_path / "p", force=True)  # fmt: skip
    lc = LmcConfig(groups=((a, b),), points=3, space="delta", split="quick",  # type: ignore[arg-type]
                   out=tmp_path / "l", force=True)  # fmt: skip
    for executor, expected in ((None, None), (ExecutorConfig(device="cpu"), "cpu")):
        devices.clear()
        run_prune(pc, executor=executor)
        run_lmc(lc, executor=executor)
        assert devices == [expected, expected]


def test_branch_keys_are_the_evaluators_keys() -> None:
    ad, other = random_adapter(1), random_adapter(2)
    ev = Evaluator(get_task("tiny"), {"a": ad, "b": other}, split="quick")
    keys = BranchKeys({"a": ad, "b": other})
    assert keys.branches == ev.branches and len(keys) == 12
    cfg = {("b", m): 0.5 for m in list(other.modules)[:2]}
    assert keys.key(cfg) == ev.key(cfg)
    assert keys.config(keys.key(cfg)) == {b: cfg.get(b, 0.0) for b in keys.branches}
    with pytest.raises(OptionError, match="several adapters"):
        keys.resolve(next(iter(ad.modules)))


@pytest.mark.skipif(not CUDA, reason="needs CUDA (torch.cuda.is_available() is False here)")
@pytest.mark.parametrize("reuse", [True, False])
def test_gpu_equals_cpu(reuse: bool) -> None:
    ad = random_adapter(6)
    mods = list(ad.modules)
    cpu = Evaluator(get_task("tiny"), ad, split="eval", device="cpu", reuse_prefix=reuse)
    gpu = Evaluator(get_task("tiny"), ad, split="eval", device="cuda", reuse_prefix=reuse)
    assert next(gpu.model.parameters()).device.type == "cuda"
    assert all(b.inputs["input_ids"].is_cuda and b.labels.is_cuda for b in gpu.batches)
    for c in configs(mods):
        m_cpu, m_gpu = cpu.value(c), gpu.value(c)
        assert isinstance(m_gpu.logprob, float) and m_gpu.n == m_cpu.n
        assert m_gpu.logprob == pytest.approx(m_cpu.logprob, abs=1e-4)
        assert m_gpu.loss == pytest.approx(m_cpu.loss, abs=1e-4)
        lp_cpu = cpu.metrics_per_example(c).logprobs
        lp_gpu = gpu.metrics_per_example(c).logprobs
        assert np.abs(lp_gpu - lp_cpu).max() < 1e-4
    if reuse:
        runner = gpu._runner
        assert runner is not None and runner.cache.nbytes > 0
        assert runner.cache.nbytes <= runner.cache.max_bytes
    gpu.close()
    cpu.close()
