"""The plateau rule that sets the presets' training length (coto_tools.tasks.presets), on
synthetic loss curves with known shape."""

from __future__ import annotations

import numpy as np
import pytest

from coto_tools.errors import OptionError
from coto_tools.tasks.presets import PLATEAU, PlateauRule


def _curve(steps: int, tau: float, seed: int = 0) -> list[float]:
    """An exponential decay to 0.01 with time constant ``tau`` and a little batch noise."""
    t = np.arange(steps)
    noise = np.random.default_rng(seed).normal(0.0, 0.005, steps)
    return list(1.6 * np.exp(-t / tau) + 0.01 + noise)


def test_still_falling_and_plateaued() -> None:
    assert not PLATEAU.plateaued(_curve(40, 30.0))  # 40 steps of a slow decay: still falling
    assert PLATEAU.plateaued(_curve(200, 15.0))  # long after the decay: flat
    t = PLATEAU.terms(_curve(100, 10.0))
    assert t["prev"] > t["last"] - 0.02 and t["tol"] == pytest.approx(0.02)


def test_choose_takes_the_fewest_steps_at_which_every_run_plateaued() -> None:
    """A method that learns later (CoTo switching adapters off) sets the length for both."""
    curves = {
        T: {
            "lora": [_curve(T, 10.0, s) for s in (0, 1)],
            "coto": [_curve(T, 25.0, s) for s in (0, 1)],
        }
        for T in (40, 80, 160, 320)
    }
    fast_only = {T: {"lora": c["lora"]} for T, c in curves.items()}
    both = PLATEAU.choose(curves)
    assert both is not None and both > PLATEAU.choose(fast_only)  # type: ignore[operator]
    # symmetric: renaming the methods changes nothing
    swapped = {T: {"x": c["coto"], "y": c["lora"]} for T, c in curves.items()}
    assert PLATEAU.choose(swapped) == both
    assert PlateauRule().choose({40: {"coto": [_curve(40, 30.0)]}}) is None


def test_too_few_steps_to_judge() -> None:
    with pytest.raises(OptionError, match="too few"):
        PLATEAU.terms([1.0] * 5)
