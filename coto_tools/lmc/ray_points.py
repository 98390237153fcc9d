"""LMC points on a Ray cluster: :class:`RayPointEvaluator` hands the runtime's
:class:`~coto_tools.runtime.ray_executor.RayEvaluator` what to evaluate (delta space: gate
configurations of named branches; factor space: interpolated adapters, by value), and
:class:`PointRecorder` lists the points a path asks for so that they can be evaluated at once.

The runtime knows nothing of LMC: it evaluates configurations (``value_batch``) and adapters
(``value_adapters``); this module turns points into those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coto_tools.adapters.lora import LoraAdapter
from coto_tools.lmc.engine import PointEvaluator
from coto_tools.lmc.space import Space, check_compatible, delta_gates, interpolate_factors
from coto_tools.runtime.executor import EvaluatorSpec, ExecutorConfig, ExecutorError
from coto_tools.runtime.ray_executor import RayEvaluator
from coto_tools.tasks.base import Metrics, Task


class RayPointEvaluator(PointEvaluator):
    """:class:`~coto_tools.lmc.engine.PointEvaluator` whose points are evaluated by a
    :class:`RayEvaluator` (delta space: one configuration of the named branches; factor space:
    the interpolated adapter, evaluated by a worker on its second model). :meth:`prefetch`
    evaluates many points at once; :meth:`value` then answers from the caches."""

    def __init__(
        self,
        task: Task,
        adapters: Mapping[str, LoraAdapter],
        *,
        spec: EvaluatorSpec,
        executor: ExecutorConfig,
    ) -> None:
        # PointEvaluator.__init__ would build a model here; the driver needs none
        self.task = task
        self.split = spec.split
        self.adapters = dict(adapters)
        self.evaluator = RayEvaluator(spec, executor)  # type: ignore[assignment]
        self._factor_model = None
        self._cache: dict[Any, Metrics] = {}
        self._factor_done: dict[Any, Metrics] = {}
        self.evaluations = 0

    @property
    def model(self) -> Any:
        raise ExecutorError("the models live on the Ray workers; the driver holds none")

    def _point(self, weights: Mapping[str, float]) -> LoraAdapter:
        names = list(weights)
        ads = [self.adapters[n] for n in names]
        check_compatible(ads, Space.factor)
        return interpolate_factors(ads, [weights[n] for n in names])

    def _factor(self, weights: dict[str, float]) -> Metrics:
        key = (Space.factor, tuple(weights.items()))
        hit = self._factor_done.get(key)
        if hit is not None:
            return hit
        point = self._point(weights)
        if not point.modules:
            return self.evaluator.value({})
        return self.evaluator.value_adapters([point])[0]  # type: ignore[attr-defined]

    def prefetch(self, points: Sequence[tuple[Space | str, Mapping[str, float]]]) -> None:
        """Evaluate ``(space, weights)`` points together (in parallel on the workers)."""
        delta: list[dict[Any, float]] = []
        factor: dict[Any, LoraAdapter] = {}
        for space, weights in points:
            key = self._key(Space(space), weights)
            if key in self._cache or key in self._factor_done or key in factor:
                continue
            names = [n for n, _ in key[1]]
            if key[0] is Space.delta:
                ads = [self.adapters[n] for n in names]
                delta.append(dict(delta_gates(names, ads, [w for _, w in key[1]])))
            else:
                point = self._point(dict(key[1]))
                if point.modules:
                    factor[key] = point
                else:
                    delta.append({})
        if delta:
            self.evaluator.value_batch(delta)
        if factor:
            got = self.evaluator.value_adapters(list(factor.values()))  # type: ignore[attr-defined]
            self._factor_done.update(zip(factor, got, strict=True))

    def close(self) -> None:
        self.evaluator.close()


class PointRecorder:
    """Records the ``(space, weights)`` points an LMC path asks for (placeholder metrics)."""

    def __init__(self) -> None:
        self.points: list[tuple[Space, dict[str, float]]] = []

    def value(self, space: Space | str, weights: Mapping[str, float]) -> Metrics:
        self.points.append((Space(space), dict(weights)))
        return Metrics(accuracy=0.0, loss=0.0, logprob=0.0, n=0)

    def close(self) -> None:
        pass


__all__ = ["PointRecorder", "RayPointEvaluator"]
