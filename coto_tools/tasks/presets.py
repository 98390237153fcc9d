"""The default preset of the built-in benchmark: a BBC task variant plus training settings,
chosen by measured headroom so that pruning and merging have room to differ (CoTo, arXiv
2506.05713, on all-MiniLM-L6-v2 / BBC News; see CALIBRATION.md for why the full task is at its
ceiling).

:data:`DEFAULT_PRESET` names the variant (equal to :data:`coto_tools.tasks.bbc.DEFAULT_VARIANT`)
and the recommended ``steps`` / ``batch_size`` / ``lr``;
``TrainConfig.from_preset(DEFAULT_PRESET, method, seed)`` (:mod:`coto_tools.train.config`, a
layer above the tasks) builds the training configuration. :data:`MEASURED` holds the numbers of
every candidate that was measured (eval split, 400 documents) and :class:`HeadroomRule` the rule
that picked the preset, fixed before LoRA and CoTo were compared; :class:`PlateauRule` sets
the training length from training losses alone (:data:`PLATEAU`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coto_tools.errors import OptionError

METHODS = ("lora", "coto")


@dataclass(frozen=True)
class HeadroomRule:
    """Which measured candidate becomes the preset (uses both methods symmetrically).

    Per candidate: ``gain_min = min_m (trained_m - zero_shot)``, ``top = max_m trained_m``,
    ``prune_drop = max_m (trained_m - everyother_even_m)``. Eligible: ``gain_min >= min_gain``,
    ``top <= max_top``, ``prune_drop >= min_prune_drop``. Pick the eligible candidate with the
    largest ``gain_min``; those within ``tie`` of it are tied and the lowest ``top`` wins.
    """

    min_gain: float = 0.10
    max_top: float = 0.95
    min_prune_drop: float = 0.02
    tie: float = 0.02

    @staticmethod
    def terms(row: Mapping[str, Any]) -> dict[str, float]:
        """``gain_min``, ``top``, ``prune_drop`` of a row with ``zero_shot`` and per-method
        ``{"accuracy", "even"}`` entries (accuracies)."""
        zs = float(row["zero_shot"])
        missing = [m for m in METHODS if m not in row]
        if missing:
            raise OptionError(f"headroom rule: row lacks method(s) {missing}")
        acc = {m: float(row[m]["accuracy"]) for m in METHODS}
        return {
            "gain_min": min(a - zs for a in acc.values()),
            "top": max(acc.values()),
            "prune_drop": max(acc[m] - float(row[m]["even"]) for m in METHODS),
        }

    def eligible(self, row: Mapping[str, Any]) -> bool:
        t = self.terms(row)
        return (
            t["gain_min"] >= self.min_gain
            and t["top"] <= self.max_top
            and t["prune_drop"] >= self.min_prune_drop
        )

    def choose(self, rows: Mapping[str, Mapping[str, Any]]) -> tuple[str, bool]:
        """``(name, eligible)``: the chosen row; ``eligible`` False when no row was eligible
        and the largest ``gain_min`` was taken instead."""
        if not rows:
            raise OptionError("headroom rule: no measured candidates")
        pool = [n for n, r in rows.items() if self.eligible(r)]
        ok = bool(pool)
        pool = pool or list(rows)
        terms = {n: self.terms(rows[n]) for n in pool}
        best = max(t["gain_min"] for t in terms.values())
        tied = [n for n in pool if terms[n]["gain_min"] >= best - self.tie]
        return min(tied, key=lambda n: (terms[n]["top"], -terms[n]["gain_min"], n)), ok

    def describe(self) -> str:
        return (
            f"eligible: min over methods (trained - zero-shot) >= {self.min_gain:g}, max over "
            f"methods trained <= {self.max_top:g}, max over methods (trained - everyother-even) "
            f">= {self.min_prune_drop:g}; pick the largest min-gain, ties (within {self.tie:g}) "
            "to the lowest max trained"
        )


RULE = HeadroomRule()


@dataclass(frozen=True)
class PlateauRule:
    """When a run's training loss has plateaued, and how many steps a preset trains.

    A run of ``T`` steps with per-step training losses ``l_1..l_T``: ``w = max(min_window,
    round(window * T))``, ``prev`` = mean loss of steps ``T-2w+1..T-w``, ``last`` = mean of the
    last ``w``. Plateaued: ``prev - last <= max(abs_tol, rel_tol * prev)`` (the loss no longer
    falls by more than that over the last tenth of training). For CoTo both windows lie in its
    all-adapters phase (the last 25%) when ``window <= 0.125``.

    A preset's steps: the smallest candidate ``T`` at which *every* measured run (LoRA and CoTo
    alike, every seed measured) has plateaued. The rule reads training losses only, never an
    evaluation, so it cannot favour the method that wins.
    """

    window: float = 0.10
    min_window: int = 4
    abs_tol: float = 0.02
    rel_tol: float = 0.05

    def terms(self, losses: Iterable[float]) -> dict[str, float]:
        """``prev``, ``last``, ``fall`` (prev - last) and ``tol`` of one run's losses."""
        ls = [float(x) for x in losses]
        T = len(ls)
        w = max(self.min_window, round(self.window * T))
        if T < 2 * w:
            raise OptionError(f"plateau rule: {T} steps are too few (need {2 * w})")
        prev = sum(ls[T - 2 * w : T - w]) / w
        last = sum(ls[T - w :]) / w
        return {
            "prev": prev,
            "last": last,
            "fall": prev - last,
            "tol": max(self.abs_tol, self.rel_tol * prev),
        }

    def plateaued(self, losses: Iterable[float]) -> bool:
        t = self.terms(losses)
        return t["fall"] <= t["tol"]

    def choose(self, curves: Mapping[int, Mapping[str, Iterable[Iterable[float]]]]) -> int | None:
        """The smallest ``T`` of ``{T: {method: [losses of each seed]}}`` at which every run
        plateaued (``None``: none did, train longer)."""
        for T in sorted(curves):
            runs = [ls for per_method in curves[T].values() for ls in per_method]
            if runs and all(self.plateaued(ls) for ls in runs):
                return T
        return None

    def describe(self) -> str:
        return (
            f"a run has plateaued when its mean training loss over the last {self.window:.0%} "
            f"of steps is at most max({self.abs_tol:g}, {self.rel_tol:.0%} of it) below the "
            f"mean over the {self.window:.0%} before; a preset trains the fewest candidate "
            "steps at which every LoRA and CoTo run measured has plateaued (training losses "
            "only: the rule never sees which method is more accurate)"
        )


PLATEAU = PlateauRule()

# Measured by benchmarks/bench_presets.py on 2026-11-29 (full table: benchmarks/results/presets.md):
#   python benchmarks/bench_presets.py --seeds 1 --steps 120 --batch-size 16 --max-tokens 48
#   python benchmarks/bench_presets.py --candidates d-full-letters e-shots16-letters --seeds 1 2 \
#       --steps 120 --batch-size 16 --max-tokens 48 --merge
#   python benchmarks/bench_presets.py --candidates e-shots16-letters --seeds 1 --steps 120 \
#       --batch-size 16 --max-tokens 48 --lr 3e-3
# bbc-topic, r=8 alpha=16 on q/k/v of 6 layers, AdamW lr 1e-3 constant after 8% warm-up,
# 120 steps x batch 16, one torch thread; accuracies on the eval split (400 docs, SE ~0.02).
# Per method: trained accuracy / mean log-prob of the true label, accuracy with only the
# even layers' adapters ("even"), and the 1:1 factor-space merge of seeds 1 and 2 ("merge").
MEASURED: dict[str, dict[str, Any]] = {
    "a-full-plain": {
        "variant": {"max_tokens": 48, "prompts": "plain", "shots": None, "text": "headline+lead"},
        "lr": 0.001, "steps": 120, "batch_size": 16, "train_docs": 1825,
        "seeds": [1], "n": 400, "zero_shot": 0.7725, "zero_shot_logprob": -0.7339,
        "lora": {"accuracy": 0.94, "logprob": -0.1491, "even": 0.9275, "odd": 0.9375,
                 "merge": None, "per_seed": [0.94]},
        "coto": {"accuracy": 0.935, "logprob": -0.1741, "even": 0.94, "odd": 0.92,
                 "merge": None, "per_seed": [0.935]},
    },
    "b-shots8-plain": {
        "variant": {"max_tokens": 48, "prompts": "plain", "shots": 8, "text": "headline+lead"},
        "lr": 0.001, "steps": 120, "batch_size": 16, "train_docs": 40,
        "seeds": [1], "n": 400, "zero_shot": 0.7725, "zero_shot_logprob": -0.7339,
        "lora": {"accuracy": 0.8975, "logprob": -0.3285, "even": 0.8875, "odd": 0.8825,
                 "merge": None, "per_seed": [0.8975]},
        "coto": {"accuracy": 0.905, "logprob": -0.3312, "even": 0.8975, "odd": 0.9025,
                 "merge": None, "per_seed": [0.905]},
    },
    "c-shots16-plain": {
        "variant": {"max_tokens": 48, "prompts": "plain", "shots": 16, "text": "headline+lead"},
        "lr": 0.001, "steps": 120, "batch_size": 16, "train_docs": 80,
        "seeds": [1], "n": 400, "zero_shot": 0.7725, "zero_shot_logprob": -0.7339,
        "lora": {"accuracy": 0.9275, "logprob": -0.239, "even": 0.93, "odd": 0.92,
                 "merge": None, "per_seed": [0.9275]},
        "coto": {"accuracy": 0.925, "logprob": -0.2421, "even": 0.9275, "odd": 0.92,
                 "merge": None, "per_seed": [0.925]},
    },
    "d-full-letters": {
        "variant": {"max_tokens": 48, "prompts": "letters", "shots": None, "text": "headline+lead"},
        "lr": 0.001, "steps": 120, "batch_size": 16, "train_docs": 1825,
        "seeds": [1, 2], "n": 400, "zero_shot": 0.1775, "zero_shot_logprob": -1.7505,
        "lora": {"accuracy": 0.9438, "logprob": -0.1593, "even": 0.8975, "odd": 0.905,
                 "merge": 0.9475, "per_seed": [0.935, 0.9525]},
        "coto": {"accuracy": 0.925, "logprob": -0.2018, "even": 0.8438, "odd": 0.9,
                 "merge": 0.9525, "per_seed": [0.91, 0.94]},
    },
    "e-shots16-letters": {
        "variant": {"max_tokens": 48, "prompts": "letters", "shots": 16, "text": "headline+lead"},
        "lr": 0.001, "steps": 120, "batch_size": 16, "train_docs": 80,
        "seeds": [1, 2], "n": 400, "zero_shot": 0.1775, "zero_shot_logprob": -1.7505,
        "lora": {"accuracy": 0.9437, "logprob": -0.1896, "even": 0.8813, "odd": 0.9038,
                 "merge": 0.9475, "per_seed": [0.9425, 0.945]},
        "coto": {"accuracy": 0.9363, "logprob": -0.1994, "even": 0.8875, "odd": 0.9062,
                 "merge": 0.9425, "per_seed": [0.9275, 0.945]},
    },
    "e-shots16-letters-lr0.003": {
        "variant": {"max_tokens": 48, "prompts": "letters", "shots": 16, "text": "headline+lead"},
        "lr": 0.003, "steps": 120, "batch_size": 16, "train_docs": 80,
        "seeds": [1], "n": 400, "zero_shot": 0.1775, "zero_shot_logprob": -1.7505,
        "lora": {"accuracy": 0.93, "logprob": -0.2466, "even": 0.885, "odd": 0.915,
                 "merge": None, "per_seed": [0.93]},
        "coto": {"accuracy": 0.905, "logprob": -0.4394, "even": 0.9025, "odd": 0.87,
                 "merge": None, "per_seed": [0.905]},
    },
    "f-shots16-headline": {
        "variant": {"max_tokens": 48, "prompts": "plain", "shots": 16, "text": "headline"},
        "lr": 0.001, "steps": 120, "batch_size": 16, "train_docs": 80,
        "seeds": [1], "n": 400, "zero_shot": 0.675, "zero_shot_logprob": -0.9372,
        "lora": {"accuracy": 0.8075, "logprob": -0.6663, "even": 0.7825, "odd": 0.7975,
                 "merge": None, "per_seed": [0.8075]},
        "coto": {"accuracy": 0.82, "logprob": -0.6379, "even": 0.78, "odd": 0.8125,
                 "merge": None, "per_seed": [0.82]},
    },
}  # fmt: skip


def _positive_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


@dataclass(frozen=True)
class Preset:
    """A task variant with recommended training settings and its measured numbers."""

    name: str
    task: str
    variant: Mapping[str, Any]
    steps: int
    batch_size: int
    lr: float
    measured: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", dict(self.variant))
        object.__setattr__(self, "measured", dict(self.measured))
        problems = [
            msg
            for ok, msg in (
                (_positive_int(self.steps), f"steps must be an integer >= 1, got {self.steps!r}"),
                (
                    _positive_int(self.batch_size),
                    f"batch size must be an integer >= 1, got {self.batch_size!r}",
                ),
                (
                    isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf,
                    f"lr must be positive, got {self.lr!r}",
                ),
            )
            if not ok
        ]
        if problems:
            raise OptionError(f"preset {self.name}: " + "; ".join(problems))

    def summary(self) -> dict[str, Any]:
        """JSON-able: variant, training settings and the measured accuracies."""
        return {
            "name": self.name,
            "task": self.task,
            "variant": dict(self.variant),
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "measured": dict(self.measured),
        }

    def lines(self) -> list[str]:
        """Human-readable lines for ``coto-tools tasks``."""
        opts = ", ".join(f"{k}={v}" for k, v in self.variant.items()) or "defaults"
        out = [
            f"default preset of {self.task} ({self.name}): {opts}; "
            f"train {self.steps} steps x batch {self.batch_size}, lr {self.lr:g}"
        ]
        m = self.measured
        if m:
            seeds = ", ".join(str(x) for x in m["seeds"])
            out.append(
                f"  measured on eval ({m['n']} docs; seeds {seeds}): accuracy zero-shot "
                f"{m['zero_shot']:.3f}, LoRA {m['lora']['accuracy']:.3f}, "
                f"CoTo {m['coto']['accuracy']:.3f}; even layers only: "
                f"LoRA {m['lora']['even']:.3f}, CoTo {m['coto']['even']:.3f}"
            )
        return out


def preset_for(task: str, variant: Mapping[str, Any] | None = None) -> Preset | None:
    """The preset describing ``task`` with options ``variant`` (None if none was measured)."""
    if task != DEFAULT_PRESET.task:
        return None
    if variant and dict(variant) != dict(DEFAULT_PRESET.variant):
        return None
    return DEFAULT_PRESET


def measured_rows(names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Rows of :data:`MEASURED` (all, or those named)."""
    names = list(MEASURED) if names is None else list(names)
    return {n: MEASURED[n] for n in names}


PRESET_NAME = "e-shots16-letters"
# The variant by HeadroomRule; the steps by PlateauRule (benchmarks/bench_plateau.py --preset
# default: at 80 steps CoTo's training loss still fell by 0.023 over the last tenth, at 120 both
# methods' losses had plateaued; results in benchmarks/results/plateau_bbc-topic_default.json).
DEFAULT_PRESET = Preset(
    name=PRESET_NAME,
    task="bbc-topic",
    variant=MEASURED[PRESET_NAME]["variant"],
    steps=120,
    batch_size=16,
    lr=1e-3,
    measured=MEASURED[PRESET_NAME],
)
