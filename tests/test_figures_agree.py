"""Figures and reports that agree: one palette and spelling, 0-based layers, bars from 0, no
error bars for k = 1, no empty figure or header-only CSV, derived layer thirds, differences (not
ratios) for signed metrics, ``none`` once."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from coto_tools.adapters.players import make_players  # noqa: E402
from coto_tools.plotting import (  # noqa: E402
    METHOD_COLORS,
    cell_format,
    color_for,
    colors_for,
    display_name,
    error_bars,
    method_of,
)
from coto_tools.shapley.plots import heatmap_grid, plot_heatmaps  # noqa: E402

MODULES = [
    f"encoder.layer.{i}.attention.self.{k}" for i in range(6) for k in ("query", "key", "value")
]


def test_one_colour_and_spelling_per_method() -> None:
    assert method_of("coto") == method_of("CoTo (n=2)") == method_of("coto s0-s1") == "coto"
    assert method_of("lora-s0") == "lora" and method_of("runs/x") is None
    assert display_name("coto s0-s1") == "CoTo s0-s1" and display_name("lora") == "LoRA"
    # the colour follows the method, not the order the labels come in
    assert colors_for(["coto", "lora"]) == [METHOD_COLORS["coto"], METHOD_COLORS["lora"]]
    assert colors_for(["lora", "coto"]) == [METHOD_COLORS["lora"], METHOD_COLORS["coto"]]
    others = colors_for(["a", "b"])
    assert others[0] != others[1] and not set(others) & set(METHOD_COLORS.values())
    assert color_for("LoRA (n=3)") == METHOD_COLORS["lora"]


def test_error_bars_only_with_a_spread() -> None:
    assert error_bars([0.0, 0.0], [1, 1]) is None
    assert error_bars([0.1, float("nan")], [2, 1]) == [0.1, 0.0]


def test_one_number_format_for_a_figure() -> None:
    # 3 significant digits for the largest value, the same decimals for every cell
    assert cell_format([0.648, 0.0928]) == "{:.3f}"
    assert cell_format([0.0928, 0.01]) == "{:.4f}"
    assert cell_format([2.5, -0.01]) == "{:.2f}"
    assert cell_format([0.0004]) == "{:.6f}"  # tiny values keep their digits
    assert cell_format([]) == "{:.2f}"


def test_heatmap_layers_are_zero_based_and_share_a_format() -> None:
    players = make_players(MODULES, "module")
    grid = heatmap_grid(players, np.arange(18.0) / 100)
    assert grid.cols == tuple(str(i) for i in range(6))  # as in shapley.csv and strategies
    fig = plot_heatmaps([(f"run {i}", grid) for i in range(4)])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    decimals = {len(t.split(".")[1]) for t in texts}
    assert len(decimals) == 1  # one number format across the panels
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(visible) == 4
    rows = {round(ax.get_position().y0, 3) for ax in visible}
    assert len(rows) == 2  # 4 runs: two rows of two, readable at page width
    plt.close(fig)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    import torch

    from coto_tools.train import TrainConfig, train

    root = tmp_path_factory.mktemp("figures_runs")
    out = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for method in ("coto", "lora"):
            cfg = TrainConfig(task="tiny", method=method, seed=1, steps=4, batch_size=16, lr=2e-2)
            train(cfg, progress=False).save(root / method)
            out.append(root / method)
    finally:
        torch.set_num_threads(before)
    return out


def test_prune_outputs_skip_what_was_not_computed(tmp_path: Path, tiny_runs: list[Path]) -> None:
    from coto_tools.prune.outputs import write_outputs
    from coto_tools.prune.run import PruneConfig, run_prune

    cfg = PruneConfig(
        checkpoints=tuple(tiny_runs),
        split="quick",
        metric="logprob",
        strategies=("none", "all", "low", "everyother"),
        curves=False,
        rank_sweep=False,
        out=tmp_path / "p",
    )
    result = run_prune(cfg)
    names = sorted(p.name for p in write_outputs(result))
    assert names == ["prune.csv", "prune_report.md", "prune_strategies.png"]
    assert not (tmp_path / "p" / "prune_curves.csv").exists()
    assert not (tmp_path / "p" / "prune_curves.png").exists()
    report = (tmp_path / "p" / "prune_report.md").read_text()
    assert "2 layers: low 0, middle 1, high none" in report  # derived, not "(5 layers: 2/2/1)"
    assert "5 layers" not in report
    table = report.split("## Strategies")[1].split("\n## ")[0]
    assert table.count("| none |") == 1  # requested and implied: listed once
    assert "vs all" in table and "%," not in table.split("| all |")[1].split("gain")[0]
    assert "difference to all" in table.splitlines()[0]


def test_convergence_of_an_exact_run_is_not_a_lone_dot() -> None:
    from coto_tools.shapley.plots import plot_convergence
    from coto_tools.shapley.registry import estimate_shapley

    weights = np.array([0.5, -0.2, 0.1])
    res = estimate_shapley(lambda m: m.astype(float) @ weights, 3, estimator="exact")
    fig = plot_convergence(res)
    ax = fig.axes[0]
    bars = sorted(p.get_width() for p in ax.patches)
    np.testing.assert_allclose(bars, sorted(weights), atol=1e-12)  # additive game: phi = w
    assert not [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 1]
    plt.close(fig)
