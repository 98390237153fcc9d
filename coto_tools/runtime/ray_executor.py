"""Evaluating configurations on a Ray cluster: :class:`RayEvaluator` (needs ``coto-tools[ray]``).

A pool of Ray actors, each holding one model replica (an
:class:`~coto_tools.runtime.evaluator.Evaluator` built from an
:class:`~coto_tools.runtime.executor.EvaluatorSpec`; one GPU per actor when the cluster has
GPUs, and then running there: Ray sets each actor's ``CUDA_VISIBLE_DEVICES``, so it uses
``cuda``; CPU otherwise), evaluates configurations sent by the driver. The driver keeps the
cache, computes the canonical keys with the same
:class:`~coto_tools.runtime.branches.BranchKeys` the workers use, and splits the uncached keys
of a batch, sorted lexicographically as the local evaluator sorts them, into one contiguous
chunk per worker (so prefix reuse still works inside each worker); results come back in input
order. A worker that dies mid-evaluation is replaced by a fresh actor and its chunk resubmitted
(at most ``max_retries`` times per chunk); logging (the Shapley evaluation log) stays in the
driver.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.runtime.branches import BranchKeys, Config, ConfigKey
from coto_tools.runtime.device import AUTO, CPU, CUDA, DeviceError
from coto_tools.runtime.evaluator import BaseEvaluator, Evaluator, PerExample
from coto_tools.runtime.spec import EvaluatorSpec, ExecutorConfig, ExecutorError
from coto_tools.tasks.base import Metrics

MAX_AUTO_WORKERS = 64


RAY_INIT_TIMEOUT_S = 60.0
"""Most seconds ``ray.init`` may take (connecting to a cluster, or starting a local one)."""


def _check_reachable(address: str, timeout: float) -> None:
    """A TCP connection to ``host:port`` of ``address`` (``ray://`` or bare), so that an
    address where nothing listens fails at once instead of in Ray's retry loop."""
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # "auto", a bare host: Ray resolves it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(
            f"cannot connect to Ray at {address}: {exc.strerror or exc} (is a Ray head running "
            "there? start one with `ray start --head`, or fix --ray-address)"
        ) from None


class _InitTimeout(Exception):
    pass


def connect(ray: Any, address: str | None, *, timeout: float = RAY_INIT_TIMEOUT_S) -> None:
    """``ray.init(address)`` bounded by ``timeout`` seconds: an unreachable address, a failure
    or a hang is one :class:`ExecutorError` line. (The bound is a SIGALRM in the main thread of
    a POSIX process; elsewhere only the reachability check applies.)"""
    where = address or "(new local instance)"
    if address:
        _check_reachable(address, min(timeout, 10.0))
    use_alarm = (
        hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    )
    previous: Any = None
    if use_alarm:

        def _expired(signum: int, frame: Any) -> None:
            raise _InitTimeout

        previous = signal.signal(signal.SIGALRM, _expired)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except _InitTimeout:
        raise ExecutorError(
            f"cannot connect to Ray at {where}: no answer within {timeout:g} s"
        ) from None
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise ExecutorError(f"cannot connect to Ray at {where}: {exc}") from exc
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(
            "--executor ray needs Ray: pip install 'coto-tools[ray]' (or pip install ray)"
        ) from None
    return ray


class _Worker:
    """One model replica (a Ray actor): builds the spec's evaluator and evaluates keys."""

    def __init__(self, spec: EvaluatorSpec, threads: int, device: str) -> None:
        import torch

        torch.set_num_threads(threads)
        self.load(spec, device)

    def load(self, spec: EvaluatorSpec, device: str) -> None:
        """Switch to another spec (an idle actor reused by the next evaluator)."""
        previous = getattr(self, "ev", None)
        if previous is not None:
            previous.close()
        self.spec = spec
        self.ev: Evaluator = spec.build(device=device)
        self._factor_model: Any = None

    def describe(self) -> tuple[list[tuple[str, str]], np.ndarray, int, str, int, str]:
        """``(branches in key order, labels, pid, device, n_examples, dtype)`` (the driver
        checks the branches)."""
        import os

        ev = self.ev
        labels = ev.labels.numpy().copy()
        return list(ev.branches), labels, os.getpid(), str(ev.device), ev.n_examples, str(ev.dtype)

    def evaluate(self, keys: list[ConfigKey]) -> tuple[list[Metrics], int]:
        """Metrics of ``keys`` (canonical gate tuples), and the forward passes done."""
        before = self.ev.n_forward
        configs = [self.ev.config_of(k) for k in keys]
        return self.ev.value_batch(configs), self.ev.n_forward - before

    def per_example(self, keys: list[ConfigKey]) -> tuple[list[PerExample], int]:
        out = [self.ev.metrics_per_example(self.ev.config_of(k)) for k in keys]
        return out, len(out)

    def evaluate_adapters(self, adapters: list[LoraAdapter]) -> tuple[list[Metrics], int]:
        """Each adapter alone (every module gate 1) on a second base model of the task."""
        if self._factor_model is None:
            self._factor_model = self.ev.task.build_model_in(self.ev.dtype)
        out = []
        for ad in adapters:
            ev = Evaluator(
                self.ev.task, ad, split=self.spec.split, batch_size=self.spec.batch_size,
                model=self._factor_model, device=self.ev.device,
            )  # fmt: skip
            try:
                out.append(ev.value(dict.fromkeys(ad.modules, 1.0)))
            finally:
                ev.close()
        return out, len(out)


class RayEvaluator(BaseEvaluator):
    """The :class:`~coto_tools.runtime.evaluator.BaseEvaluator` interface (``value``,
    ``value_batch``, ``value_mask``, ``key``, ``mask_config``, ``game``, plus
    ``metrics_per_example``, ``labels``, ``n_forward``, ``close``) over a pool of Ray actors (see
    module doc). Connects to ``executor.address`` (or starts a local Ray when none is running
    and no address is given; it stops when the process ends). :attr:`devices`: each worker's
    device (``cuda:0`` inside an actor is the GPU Ray gave it)."""

    def __init__(self, spec: EvaluatorSpec, executor: ExecutorConfig) -> None:
        ray = _import_ray()
        self._ray = ray
        self.spec = spec
        self.executor = executor
        self.split = spec.split
        self.adapters: dict[str, LoraAdapter] = spec.load_adapters()
        self.branch_keys = BranchKeys(self.adapters)
        if not ray.is_initialized():
            connect(ray, executor.address)
        resources = ray.cluster_resources()
        gpus, self._device = _gpus_and_device(executor, resources.get("GPU", 0))
        self._gpus = gpus
        workers = executor.workers
        if workers is None:
            if gpus > 0:
                workers = int(resources.get("GPU", 0) // gpus)
            else:
                workers = int(resources.get("CPU", 1) // executor.cpus_per_worker)
            workers = max(1, min(MAX_AUTO_WORKERS, workers))
        need = {"CPU": workers * executor.cpus_per_worker, "GPU": workers * gpus}
        short = [f"{need[r]:g} {r}s" for r in need if need[r] > resources.get(r, 0)]
        if short:  # the actors would wait forever for resources
            raise ExecutorError(
                f"--workers {workers} needs {' and '.join(short)}; the Ray cluster has "
                f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs"
            )
        self._actor_cls = ray.remote(
            num_cpus=executor.cpus_per_worker, num_gpus=gpus, max_restarts=0
        )(_Worker)
        if "dtype" not in dict(spec.evaluator_options):  # --dtype reaches every worker
            options = (*spec.evaluator_options, ("dtype", executor.dtype))
            spec = replace(spec, evaluator_options=options)
        self._spec_ref = ray.put(spec)  # shipped once; actors get it from the object store
        self._shape = (executor.cpus_per_worker, gpus)
        reused = _take_idle(ray, self._shape, workers)
        loading = [a.load.remote(self._spec_ref, self._device) for a in reused]
        self._actors: list[Any] = reused + [self._new_actor() for _ in range(workers - len(reused))]
        self.n_restarts = 0
        try:
            for i, ref in enumerate(loading):
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:  # died while idle
                    self._replace(i)
            described = ray.get([a.describe.remote() for a in self._actors])
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            for a in self._actors:
                _kill(ray, a)
            raise ExecutorError(
                f"a Ray worker could not build the evaluator of task {spec.task!r} "
                f"(are the task's model and data reachable on every node?): {exc}"
            ) from exc
        for got, *_ in described:
            if [tuple(b) for b in got] != self.branches:
                raise ExecutorError(
                    "a worker's evaluator has other branches than the driver's; is the same "
                    "coto-tools version installed on every node?"
                )
        self.labels = described[0][1]
        self.n_examples: int = described[0][4]  # rows of the split (also when scored per token)
        self.dtype = getattr(torch, described[0][5].removeprefix("torch."))
        self.pids = [d[2] for d in described]
        self.devices = [d[3] for d in described]
        self._cache: dict[ConfigKey, Metrics] = {}
        self.n_forward = 0
        self.n_cache_hits = 0

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(self._spec_ref, self.executor.cpus_per_worker, self._device)

    @property
    def workers(self) -> int:
        return len(self._actors)

    # -- evaluating -----------------------------------------------------------------------
    def value_batch(self, configs: Sequence[Config]) -> list[Metrics]:
        """Metrics of many configurations (uncached ones spread over the workers), in input
        order."""
        keys = [self.key(c) for c in configs]
        todo = sorted(set(keys) - set(self._cache))  # lexicographic, as the local evaluator
        if todo:
            for k, m in zip(todo, self._dispatch("evaluate", todo), strict=True):
                self._cache[k] = m
        self.n_cache_hits += len(keys)
        return [self._cache[k] for k in keys]

    def metrics_per_example(self, config: Config) -> PerExample:
        """Per-document results of one configuration (computed by a worker, not cached)."""
        return self._dispatch("per_example", [self.key(config)])[0]

    def value_adapters(self, adapters: Sequence[LoraAdapter]) -> list[Metrics]:
        """Metrics of each adapter alone on the task (a fresh adapter per item, e.g. an LMC
        factor-space point), spread over the workers; not cached."""
        return self._dispatch("evaluate_adapters", list(adapters))

    def _dispatch(self, method: str, items: list[Any]) -> list[Any]:
        """``items`` in contiguous chunks, one per worker; dead workers replaced, chunks resent."""
        ray = self._ray
        n = min(len(self._actors), len(items))
        bounds = [round(i * len(items) / n) for i in range(n + 1)]
        chunks = [items[bounds[i] : bounds[i + 1]] for i in range(n)]
        results: list[list[Any] | None] = [None] * n
        tries = [0] * n
        pending = {self._submit(method, i, chunks[i]): i for i in range(n)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            i = pending.pop(ref)
            try:
                out, forwards = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                tries[i] += 1
                if tries[i] > self.executor.max_retries:
                    raise ExecutorError(
                        f"worker {i} died {tries[i]} times on the same {len(chunks[i])} "
                        f"configuration(s); last error: {exc}"
                    ) from exc
                self._replace(i)
                pending[self._submit(method, i, chunks[i])] = i
                continue
            if method != "per_example":
                self.n_forward += forwards
            results[i] = out
        return [r for part in results for r in (part or [])]

    def _submit(self, method: str, i: int, chunk: list[Any]) -> Any:
        return getattr(self._actors[i], method).remote(chunk)

    def _replace(self, i: int) -> None:
        _kill(self._ray, self._actors[i])
        self._actors[i] = self._new_actor()
        self.n_restarts += 1

    def close(self) -> None:
        """Keep the actors idle for the next evaluator of this process (several checkpoints of
        one command reuse the replicas); :func:`release_workers` stops them, and they stop with
        the process, as does a Ray instance this evaluator started."""
        actors, self._actors = self._actors, []
        if actors and self._ray.is_initialized():
            _IDLE.setdefault(_job_id(self._ray), {}).setdefault(self._shape, []).extend(actors)


def _gpus_and_device(executor: ExecutorConfig, cluster_gpus: float) -> tuple[float, str]:
    """GPUs reserved per actor and the device each actor evaluates on (see
    :class:`~coto_tools.runtime.executor.ExecutorConfig`)."""
    requested = executor.device
    gpus = executor.gpus_per_worker
    if requested == CUDA and cluster_gpus < 1 and not gpus:
        raise DeviceError(
            "--device cuda with --executor ray: the Ray cluster has no GPUs; use --device auto "
            "or cpu"
        )
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 and requested in (AUTO, CUDA) else 0.0
    if requested == CUDA and gpus <= 0:
        raise DeviceError("--device cuda with --executor ray needs GPUs per worker (got 0)")
    return gpus, (CUDA if gpus > 0 and requested != CPU else CPU)


# idle actors by Ray job, then by (cpus, gpus) per actor: reused by the next RayEvaluator
_IDLE: dict[str, dict[tuple[float, float], list[Any]]] = {}


def _job_id(ray: Any) -> str:
    return str(ray.get_runtime_context().get_job_id())


def _take_idle(ray: Any, shape: tuple[float, float], n: int) -> list[Any]:
    job = _job_id(ray)
    for other in [j for j in _IDLE if j != job]:  # from an earlier ray.init: gone
        del _IDLE[other]
    for other_shape, actors in _IDLE.get(job, {}).items():  # they would hold resources
        if other_shape != shape:
            for a in actors:
                _kill(ray, a)
            actors.clear()
    idle = _IDLE.get(job, {}).get(shape, [])
    taken, idle[:] = idle[:n], idle[n:]
    return taken


def _kill(ray: Any, actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 -- already gone: nothing to kill
        pass


def release_workers() -> int:
    """Stop the idle actors kept for reuse (see :meth:`RayEvaluator.close`); returns how many."""
    try:
        import ray
    except ImportError:
        return 0
    n = 0
    for shapes in _IDLE.values():
        for actors in shapes.values():
            for a in actors:
                if ray.is_initialized():
                    _kill(ray, a)
                n += 1
    _IDLE.clear()
    return n


__all__ = ["RayEvaluator", "release_workers"]
