"""What a reproduction runs at a given number of seeds: ``--seeds N`` scales every stage, merges
and LMC paths use disjoint seed groups, and the merges come in three labelled variants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.reproduce.analyses import lmc_pairs
from coto_tools.reproduce.claims import MERGE_PRIMARY
from coto_tools.reproduce.config import ReproduceConfig, TaskSpec
from coto_tools.reproduce.merging import VARIANTS, _merged, same_task_plan
from coto_tools.reproduce.training import Run, planned_runs


def _runs(seeds: int) -> dict[str, Run]:
    out = {}
    for m in ("lora", "coto"):
        for s in range(seeds):
            name = f"t-{m}-s{s}"
            out[name] = Run(name, Path(name), "main", TaskSpec("tiny"), m, s, "", {}, {}, 0.0)
    return out


@pytest.mark.parametrize("seeds", [1, 2, 4, 5, 6])
def test_seeds_scale_every_stage(seeds: int) -> None:
    cfg = ReproduceConfig(out=Path("x"), task="bbc-topic", seeds=seeds)
    preset = cfg.preset()
    assert preset.seeds == preset.cross_seeds == seeds
    roles = [role for _, role, _ in planned_runs(cfg, preset)]
    assert roles.count("main") == 2 * seeds and roles.count("cross0") == 2 * seeds
    plan = same_task_plan(_runs(seeds), seeds)
    pairs, triples = seeds // 2, seeds // 3
    for m in ("lora", "coto"):
        mine = [p for p in plan if p.method == m]
        assert len(mine) == pairs * (len(VARIANTS) + 1) + triples
        used = [p.seeds for p in mine if p.label == "1:1" and p.variant == MERGE_PRIMARY]
        assert used == [(2 * i, 2 * i + 1) for i in range(pairs)]  # disjoint pairs
    lmc = lmc_pairs(list(_runs(seeds).values()))
    assert len(lmc) == 2 * pairs
    assert all(len({a.seed, b.seed}) == 2 and a.method == b.method for a, b in lmc)
    seen = [s for a, b in lmc if a.method == "lora" for s in (a.seed, b.seed)]
    assert len(seen) == len(set(seen))  # no seed in two pairs


def _adapter(a: float, b: float) -> LoraAdapter:
    mod = LoraModule(A=torch.full((2, 3), a), B=torch.full((4, 2), b), alpha=2.0)
    return LoraAdapter({"layer.0.q": mod})


def test_merge_variants_are_what_their_labels_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Merging an adapter with itself at 1:1: the parameter average and the delta average give
    it back; PEFT's linear combination gives twice its delta."""
    import coto_tools.reproduce.merging as merging

    same = _adapter(0.5, 0.25)
    monkeypatch.setattr(merging, "load_adapter", lambda path: same)
    plan = [p for p in same_task_plan(_runs(2), 2) if p.method == "lora" and p.label == "1:1"]
    got = _merged(plan, _runs(2))
    want = same.modules["layer.0.q"].delta()
    for p in plan:
        delta = got[p.name].modules["layer.0.q"].delta()
        factor = 2.0 if p.variant == "peft-linear" else 1.0
        assert torch.allclose(delta, factor * want), p.variant


@pytest.mark.parametrize(
    ("strategies", "flag"),
    [(("all", "everyother"), "--strategies all,everyother"), (None, None)],
)
def test_prune_rerun_command_names_a_restricted_strategy_list(tmp_path, strategies, flag) -> None:
    """The prune stage's rerun command passes --strategies only when the stage ran fewer than
    the command's default (the paper's eight, DEFAULT_STRATEGIES)."""
    from coto_tools.prune.strategies import DEFAULT_STRATEGIES
    from coto_tools.reproduce.commands import rerun_commands

    chosen = list(strategies or DEFAULT_STRATEGIES)
    d = {
        "meta": {"out": "o", "task": "tiny", "command": "coto-tools reproduce"},
        "summaries": {"prune": {"split": "quick"}},
        "done": {"prune": {"key": {"strategies": chosen}}},
        "root": tmp_path,
    }
    line = next(x for x in rerun_commands(d) if x.startswith("coto-tools prune"))
    if flag is None:
        assert "--strategies" not in line
    else:
        assert flag in line
