"""The report's noise rule and wording on hand-built results (no model involved)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from coto_tools.prune.report import compare, label_pair, write_report  # noqa: E402
from coto_tools.prune.run import CheckpointResult, PruneConfig, PruneResult, StrategyResult  # noqa: E402
from coto_tools.prune.strategies import parse_strategy  # noqa: E402
from coto_tools.prune.tables import Summary, strategy_rows  # noqa: E402
from coto_tools.tasks.base import Metrics  # noqa: E402

N = 1000
NAMES = tuple(f"encoder.layer.{i}.attention.self.query" for i in range(4))


def m(acc: float) -> Metrics:
    return Metrics(accuracy=acc, loss=1.0 - acc, logprob=acc - 1.0, n=N)


def ckpt(
    path: str, label: str, full: float, everyother: float, empty: float = 0.5
) -> CheckpointResult:
    strat = parse_strategy("everyother-even")
    return CheckpointResult(
        path=path, label=label, task="toy", modules=NAMES, full=m(full), empty=m(empty),
        strategies=(
            StrategyResult(parse_strategy("all"), NAMES, m(full)),
            StrategyResult(strat, NAMES[::2], m(everyother)),
        ),
    )  # fmt: skip


def result(cks: list[CheckpointResult]) -> PruneResult:
    cfg = PruneConfig(checkpoints=tuple(Path(c.path) for c in cks), strategies=("all",))
    return PruneResult(cfg, tuple(cks))


def test_compare_rule() -> None:
    a, b = Summary(0.5, 0.1, 2), Summary(0.8, 0.1, 2)
    c = compare(a, b)  # seed spread: sqrt(0.01/2 + 0.01/2) = 0.1
    assert math.isclose(c.se, 0.1) and c.verdict.startswith("beyond noise")
    assert compare(a, Summary(0.65, 0.1, 2)).verdict.startswith("within noise")
    assert compare(Summary(0.5, math.nan, 1), Summary(0.8, math.nan, 1)).verdict.startswith(
        "not judged"
    )
    binom = compare(Summary(0.5, math.nan, 1), Summary(0.5, math.nan, 1), accuracy_n=100)
    assert math.isclose(binom.se, math.sqrt(2 * 0.25 / 100))
    assert label_pair(["CoTo", "LoRA", "x"]) == ("LoRA", "CoTo")
    assert label_pair(["a", "b"]) == ("a", "b") and label_pair(["a", "b", "c"]) is None


def test_report_says_beyond_only_where_the_numbers_show_it() -> None:
    cks = [
        ckpt("l1", "lora", 0.90, 0.60), ckpt("l2", "lora", 0.91, 0.62),
        ckpt("c1", "coto", 0.90, 0.85), ckpt("c2", "coto", 0.89, 0.86),
    ]  # fmt: skip
    text = write_report(result(cks))
    every = next(ln for ln in text.splitlines() if ln.startswith("- everyother-even:"))
    full = next(ln for ln in text.splitlines() if ln.startswith("- all:"))
    # everyother: 0.855 vs 0.610, binomial SE sqrt(.855*.145/N + .61*.39/N) = 0.0190 -> beyond
    assert "+0.2450" in every and "beyond noise" in every
    # all: 0.895 vs 0.905; binomial SE 0.0134 > seed-spread SE 0.0071 -> within
    assert "-0.0100" in full and "within noise" in full and "binomial SE 0.0134" in full
    assert "Differences beyond noise: everyother-even (coto higher)" in text
    assert "seed-to-seed variation" not in text  # two checkpoints per label


def test_report_with_adapters_that_do_not_help_says_so() -> None:
    text = write_report(result([ckpt("x", "lora", 0.40, 0.45, empty=0.5)]))
    assert "do not improve accuracy over the base model" in text
    rows = strategy_rows(result([ckpt("x", "lora", 0.80, 0.65, empty=0.5)]))
    every = next(r for r in rows if r["strategy"] == "everyother-even")
    assert math.isclose(every["retained"], 0.65 / 0.80)
    assert math.isclose(every["gain_retained"], (0.65 - 0.5) / (0.80 - 0.5))
    assert [r["strategy"] for r in rows] == ["none", "all", "everyother-even"]
