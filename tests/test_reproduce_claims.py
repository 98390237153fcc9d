"""The claims' primary measurements match their wording: pruning and merging are judged on
paired drops and gaps, not on absolute accuracy (numbers worked out by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coto_tools.reproduce.claims import (
    FAILS,
    HOLDS,
    MERGE_PRIMARY,
    UNDECIDABLE,
    bits,
    build_claims,
    merging,
    pruning,
    undecidable_claims,
)


def _bitstring(rng: np.random.Generator, p: float, n: int = 200) -> str:
    return "".join("1" if x else "0" for x in rng.random(n) < p)


def _prune(full: dict[str, list[float]], even: dict[str, list[float]]) -> dict[str, Any]:
    runs = []
    for m in ("lora", "coto"):
        for s, (f, e) in enumerate(zip(full[m], even[m], strict=True)):
            runs.append(
                {
                    "run": f"{m}-s{s}",
                    "method": m,
                    "seed": s,
                    "full": {"accuracy": f},
                    "strategies": {
                        "all": {"accuracy": f},
                        "everyother-even": {"accuracy": e},
                        "everyother-odd": {"accuracy": e},
                        "low": {"accuracy": e - 0.1},
                    },
                }
            )
    return {"runs": runs}


def test_pruning_is_judged_on_the_paired_drop_not_on_accuracy() -> None:
    """LoRA is 10 points more accurate with every other layer, but CoTo loses 1 point where
    LoRA loses 5: the claim ('loses less') holds."""
    s = _prune(
        {"lora": [0.95, 0.96, 0.94], "coto": [0.85, 0.86, 0.84]},
        {"lora": [0.90, 0.905, 0.89], "coto": [0.84, 0.85, 0.83]},
    )
    c = pruning(s)
    prim = next(r for r in c["rows"] if r["primary"])
    assert prim["measure"].startswith("everyother drop")
    assert prim["lora"]["values"] == pytest.approx([-0.05, -0.055, -0.05])
    assert prim["d"] == pytest.approx(0.04 + 0.005 / 3)
    assert c["verdict"] == HOLDS
    ctx = next(r for r in c["rows"] if r["measure"] == "everyother accuracy (context)")
    assert ctx["d"] < 0 and not ctx["primary"]  # absolute accuracy points the other way
    assert c["smallest_detectable"] is not None and c["decidable"]


def _merge(acc: dict[str, list[float]], merged: dict[str, float]) -> dict[str, object]:
    singles = [
        {"name": f"{m}-s{s}", "method": m, "seeds": [s], "accuracy": a}
        for m in acc
        for s, a in enumerate(acc[m])
    ]
    merges = [
        {"method": m, "label": "1:1", "variant": MERGE_PRIMARY, "seeds": [i, i + 1],
         "accuracy": merged[f"{m}{i}"]}
        for m in acc
        for i in range(0, len(acc[m]) - 1, 2)
    ]  # fmt: skip
    return {"singles": singles, "merges": merges}


def test_merging_is_judged_on_the_gap_to_the_inputs() -> None:
    """Disjoint pairs (0,1), (2,3), (4,5); LoRA's merges lose about 8 points, CoTo's about 1,
    while LoRA's merged accuracy is higher: the claim ('keeps more') holds."""
    acc = {
        "lora": [0.99, 0.98, 0.99, 0.97, 0.99, 0.98],
        "coto": [0.80, 0.81, 0.80, 0.82, 0.79, 0.80],
    }
    merged = {"lora0": 0.905, "lora2": 0.90, "lora4": 0.91, "coto0": 0.795, "coto2": 0.80,
              "coto4": 0.785}  # fmt: skip
    c = merging(_merge(acc, merged), None)
    prim = next(r for r in c["rows"] if r["primary"])
    assert prim["unit_labels"] == ["s0+s1", "s2+s3", "s4+s5"]
    assert prim["lora"]["values"] == pytest.approx([0.905 - 0.985, 0.90 - 0.98, 0.91 - 0.985])
    assert c["verdict"] == HOLDS
    ctx = next(r for r in c["rows"] if "merged accuracy" in r["measure"])
    assert ctx["d"] < 0


def test_one_pair_is_undecidable_and_the_page_says_how_many_seeds() -> None:
    acc = {"lora": [0.9, 0.9, 0.9], "coto": [0.9, 0.9, 0.9]}
    c = merging(_merge(acc, {"lora0": 0.8, "coto0": 0.9}), None)
    assert c["verdict"] == UNDECIDABLE and not c["decidable"]
    assert c["seeds_needed"]["to_decide"] == 4
    (line,) = undecidable_claims([c])
    assert "--seeds 4" in line


def test_per_document_results_enter_the_test() -> None:
    """With per-document results kept, the paired document term is part of the SE."""
    rng = np.random.default_rng(0)
    s = _prune(
        {"lora": [0.9, 0.91, 0.92], "coto": [0.9, 0.91, 0.92]},
        {"lora": [0.85, 0.86, 0.87], "coto": [0.88, 0.89, 0.90]},
    )
    for r in s["runs"]:
        r["docs"] = {k: _bitstring(rng, 0.9) for k in ("full", "everyother-even",
                                                       "everyother-odd", "low")}  # fmt: skip
    prim = next(r for r in pruning(s)["rows"] if r["primary"])
    assert prim["n_docs"] == 200 and prim["se_doc"] > 0
    assert bits("0110").tolist() == [0.0, 1.0, 1.0, 0.0]


def test_a_missing_stage_is_not_measured() -> None:
    got = build_claims({"single": None})
    assert all(c["verdict"].startswith("not measured") for c in got)
    assert FAILS == "does not hold"


def test_pruning_with_only_the_claims_strategies() -> None:
    """The default preset prunes with everyother only: the claim is judged the same way and no
    duplicate 'mean over strategies' row appears."""
    from coto_tools.reproduce.commands import prune_command
    from coto_tools.reproduce.config import ReproduceConfig

    s = _prune(
        {"lora": [0.95, 0.96], "coto": [0.9, 0.91]}, {"lora": [0.9, 0.9], "coto": [0.9, 0.9]}
    )
    for r in s["runs"]:
        del r["strategies"]["low"]
    rows = pruning(s)["rows"]
    assert [r["measure"].split(":")[0] for r in rows] == [
        "everyother drop",
        "everyother accuracy (context)",
    ]
    preset = ReproduceConfig(out=Path("x"), task="bbc-topic").preset()
    assert preset.prune_strategies == ("all", "everyother")
    assert "--strategies all,everyother " in prune_command(
        ["a"], "eval", "o", ["all", "everyother"]
    )


def _shapley_with_interactions(red: dict[str, list[float]]) -> dict[str, Any]:
    """A Shapley stage summary whose runs carry exact Faith-Shap interactions of games built to
    have the given redundancy: v = sum of singletons + c * (unanimity of the pair (0, 1)), whose
    only pairwise index is c, so redundancy = -c / (v(all) - v(none))."""
    from coto_tools.shapley import CachedGame, SumGame, UnanimityGame, estimate_shapley
    from coto_tools.shapley.interactions import estimate_interactions

    names = ("layer0", "layer1", "layer2")
    runs = []
    for m in ("lora", "coto"):
        for s, r in enumerate(red[m]):
            # singletons 1 each; pair term c: gain = 3 + c, redundancy = -c / (3 + c)
            c = -3.0 * r / (1.0 + r)
            game = SumGame(
                UnanimityGame(3, [([0], 1.0), ([1], 1.0), ([2], 1.0)]),
                UnanimityGame(3, [([0, 1], c)]),
            )
            cached = CachedGame(game, 3)
            res = estimate_shapley(cached, 3, estimator="exact", player_names=names)
            inter = estimate_interactions(res, cached).to_dict()
            assert inter["redundancy"] == pytest.approx(r)
            runs.append({"run": f"{m}-s{s}", "method": m, "seed": s, "interactions": inter})
    return {"runs": runs}


def test_less_redundant_layers_is_a_paired_test_on_redundancy() -> None:
    from coto_tools.reproduce.claims import less_redundant

    lora, coto = [0.60, 0.55, 0.62, 0.58], [0.40, 0.37, 0.45, 0.41]
    got = less_redundant(_shapley_with_interactions({"lora": lora, "coto": coto}))
    prim = next(r for r in got["rows"] if r["primary"])
    assert got["verdict"] == HOLDS and prim["units"] == 4
    np.testing.assert_allclose(prim["paired"], np.subtract(lora, coto))  # > 0: CoTo less
    flipped = less_redundant(_shapley_with_interactions({"lora": coto, "coto": lora}))
    assert flipped["verdict"] == FAILS
    one = less_redundant(_shapley_with_interactions({"lora": lora[:1], "coto": coto[:1]}))
    assert one["verdict"] == UNDECIDABLE
    stale = less_redundant({"runs": [{"run": "a", "method": "lora", "seed": 0}]})
    assert stale["verdict"].startswith("not measured")
