"""merge_adapters / merge_files: round trips, reports, and every bad input as a CotoError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_merge_fixtures import SHAPES, make_adapter

from coto_tools.adapters import load_adapter, open_checkpoint, save_adapter
from coto_tools.errors import CotoError, OptionError, OutputExistsError
from coto_tools.merge import (
    MergeConfig,
    MergeMethod,
    MergeSpace,
    default_output,
    merge_adapters,
    merge_files,
)

ALL_METHODS = list(MergeMethod)


def _delta(adapter, name):  # type: ignore[no-untyped-def]
    return adapter.modules[name].delta()


def test_default_is_exact_average_of_deltas() -> None:
    a, b = make_adapter(0), make_adapter(1, rank=3, alpha=5.0)
    res = merge_adapters([a, b], MergeConfig())
    cfg = res.report.config
    assert cfg.method is MergeMethod.CAT and cfg.space is MergeSpace.DELTA
    assert cfg.weights == (0.5, 0.5)
    for name in SHAPES:
        m = res.adapter.modules[name]
        assert m.rank == 7 and m.scaling == 1.0
        ref = 0.5 * _delta(a, name) + 0.5 * _delta(b, name)
        torch.testing.assert_close(m.delta(), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_runs_and_single_adapter_is_itself(method: MergeMethod) -> None:
    # density 1 and weight 1: TIES/DARE/magnitude of one adapter is that adapter, in both spaces
    a = make_adapter(2)
    spaces = MergeConfig(method=method).resolve(1)
    from coto_tools.merge.config import SPACES

    for space in SPACES[method]:
        cfg = MergeConfig(method=method, weights=(1.0,), density=1.0, space=space)
        res = merge_adapters([a], cfg)
        for name in SHAPES:
            torch.testing.assert_close(
                res.adapter.modules[name].delta(), _delta(a, name), rtol=0, atol=1e-5
            )
    assert spaces.space is SPACES[method][0]


@pytest.mark.parametrize(
    "method", [MergeMethod.LINEAR, MergeMethod.TASK_ARITHMETIC, MergeMethod.SVD]
)
def test_delta_space_weighted_sum_is_linear_in_weights(method: MergeMethod) -> None:
    a, b = make_adapter(3), make_adapter(4)

    def merged(w: tuple[float, float]) -> torch.Tensor:
        cfg = MergeConfig(method=method, weights=w, space=MergeSpace.DELTA)
        return merge_adapters([a, b], cfg).adapter.modules[next(iter(SHAPES))].delta()

    torch.testing.assert_close(
        merged((1.5, -2.0)), 1.5 * merged((1.0, 0.0)) - 2.0 * merged((0.0, 1.0)), atol=1e-5, rtol=0
    )
    name = next(iter(SHAPES))
    ref = 1.5 * _delta(a, name) - 2.0 * _delta(b, name)
    torch.testing.assert_close(merged((1.5, -2.0)), ref, atol=1e-5, rtol=0)


def test_factor_linear_is_peft_formula_by_hand() -> None:
    a, b = make_adapter(5, alpha=8.0), make_adapter(6, alpha=2.0)  # scalings 2 and 0.5
    res = merge_adapters([a, b], MergeConfig(method=MergeMethod.LINEAR, weights=(1.0, -2.0)))
    name = next(iter(SHAPES))
    m, ma, mb = res.adapter.modules[name], a.modules[name], b.modules[name]
    # w·s = 2 and -1: A = sqrt2·A_a - 1·A_b, B = sqrt2·B_a + 1·B_b
    torch.testing.assert_close(m.A, 2**0.5 * ma.A - mb.A, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m.B, 2**0.5 * ma.B + mb.B, rtol=1e-6, atol=1e-6)
    assert m.scaling == 1.0


def test_dare_seed_reproducible_and_differs() -> None:
    a, b = make_adapter(7), make_adapter(8)

    def run(seed: int, space: MergeSpace) -> torch.Tensor:
        cfg = MergeConfig(method=MergeMethod.DARE_TIES, density=0.5, seed=seed, space=space)
        return merge_adapters([a, b], cfg).adapter.modules[next(iter(SHAPES))].delta()

    for space in MergeSpace:
        assert torch.equal(run(1, space), run(1, space))
        assert not torch.equal(run(1, space), run(2, space))


def test_delta_space_rank_and_energy() -> None:
    a, b = make_adapter(9), make_adapter(10)
    res = merge_adapters([a, b], MergeConfig(method=MergeMethod.TIES, space="delta", rank=3))
    assert set(res.report.ranks.values()) == {3}
    assert all(0.0 < e < 1.0 for e in res.report.energy_kept.values())
    res = merge_adapters([a, b], MergeConfig(method=MergeMethod.CAT, rank=5))
    assert set(res.report.ranks.values()) == {5} and len(res.report.energy_kept) == 3


def test_partial_modules_merged_from_those_that_have_them() -> None:
    a = make_adapter(11)
    only = {k: v for k, v in SHAPES.items() if "up_proj" not in k}
    b = make_adapter(12, shapes=only, source="b")
    res = merge_adapters([a, b], MergeConfig(weights=(0.3, 0.7)))
    name = "model.layers.0.mlp.up_proj"
    assert res.report.partial == {name: ["<test>"]}
    torch.testing.assert_close(
        res.adapter.modules[name].delta(), 0.3 * _delta(a, name), atol=1e-6, rtol=0
    )
    assert any(name in line for line in res.report.summary())


def test_modules_to_save_carried_from_first_holder() -> None:
    t1, t2 = torch.arange(3.0), torch.arange(3.0) + 10
    a = make_adapter(13, source="a")
    b = make_adapter(14, extras={"score.weight": t1}, source="b")
    c = make_adapter(15, extras={"score.weight": t2}, source="c")
    res = merge_adapters([a, b, c], MergeConfig())
    assert torch.equal(res.adapter.modules_to_save["score.weight"], t1)
    assert res.report.modules_to_save == {"score.weight": "b"}
    assert any("ignored" in n for n in res.report.notes)


def test_round_trip_dir_and_file(tmp_path: Path) -> None:
    pa, pb = tmp_path / "a", tmp_path / "b.safetensors"
    save_adapter(make_adapter(16), pa)
    save_adapter(make_adapter(17, rank=2, alpha=4.0), pb)
    cfg = MergeConfig(method=MergeMethod.TIES, density=0.5, space="delta", weights=(1.0, -1.0))
    for out in (tmp_path / "m", tmp_path / "m.safetensors"):
        res = merge_files([pa, pb], cfg, out)
        back = load_adapter(out)
        for name, m in res.adapter.modules.items():
            assert torch.equal(back.modules[name].A, m.A) and torch.equal(back.modules[name].B, m.B)
            assert back.modules[name].scaling == 1.0
        rec = open_checkpoint(out).config["coto"]
        assert rec["method"] == "ties" and rec["weights"] == [1.0, -1.0] and rec["density"] == 0.5
        assert rec["space"] == "delta" and rec["seed"] == 0 and rec["majority_sign"] == "total"
        assert rec["rank"] is None and rec["inputs"] == [str(pa), str(pb)]
    cfgfile = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert cfgfile["r"] == 6 and cfgfile["lora_alpha"] == 6


def test_default_output_and_no_overwrite(tmp_path: Path) -> None:
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_adapter(make_adapter(18), pa)
    save_adapter(make_adapter(19), pb)
    r1 = merge_files([pa, pb], MergeConfig())
    r2 = merge_files([pa, pb], MergeConfig())
    assert r1.report.output == str(tmp_path / "merged")
    assert r2.report.output == str(tmp_path / "merged-2")
    assert default_output(pa) == tmp_path / "merged-3"
    with pytest.raises(OutputExistsError):
        merge_files([pa, pb], MergeConfig(), tmp_path / "merged")
    merge_files([pa, pb], MergeConfig(weights=(1.0, 0.0)), tmp_path / "merged", force=True)
    with pytest.raises(OptionError, match="overwrite an input"):  # the one output guard
        merge_files([pa, pb], MergeConfig(), pb, force=True)


def _bad_cases(tmp_path: Path):  # type: ignore[no-untyped-def]
    a = make_adapter(20)
    wide = make_adapter(21, shapes={**SHAPES, "model.layers.0.mlp.up_proj": (16, 11)})
    r8 = make_adapter(22, rank=8)
    return [
        (lambda: merge_adapters([a, a], MergeConfig(weights=(1.0,))), "1 weight"),
        (lambda: merge_adapters([a, wide], MergeConfig()), r"up_proj: shapes differ.*\(16, 11\)"),
        (lambda: merge_adapters([a, r8], MergeConfig(method="ties")), "equal ranks"),
        (lambda: merge_adapters([], MergeConfig()), "at least one"),
        (lambda: MergeConfig(density=0.0), "density"),
        (lambda: MergeConfig(density=1.5), "density"),
        (lambda: MergeConfig(rank=0), "rank"),
        (lambda: MergeConfig(method="cat", space="factor"), "delta space only"),
        (lambda: MergeConfig(method="frobnicate"), "method must be one of"),
        (lambda: MergeConfig(weights=(float("nan"), 1.0)), "finite"),
        (lambda: MergeConfig(seed=-1), "seed"),
        (lambda: merge_files([tmp_path / "missing"], MergeConfig()), "no such file"),
    ]


def test_bad_inputs_raise_coto_errors(tmp_path: Path) -> None:
    for call, match in _bad_cases(tmp_path):
        with pytest.raises(CotoError, match=match):
            call()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", [MergeMethod.TIES, MergeMethod.CAT, MergeMethod.KNOTS])
def test_bfloat16_inputs_keep_their_dtype(method: MergeMethod) -> None:
    a, b = make_adapter(23), make_adapter(24)
    to_bf16 = {
        n: type(m)(A=m.A.bfloat16(), B=m.B.bfloat16(), alpha=m.alpha) for n, m in a.modules.items()
    }
    res = merge_adapters([a.replace(modules=to_bf16), b], MergeConfig(method=method, density=1.0))
    for name, m in res.adapter.modules.items():
        assert m.A.dtype == torch.bfloat16 and m.B.dtype == torch.bfloat16
        if method is MergeMethod.CAT:  # exact up to bfloat16 rounding of the inputs and output
            ref = 0.5 * to_bf16[name].delta() + 0.5 * _delta(b, name)
            assert float((m.delta() - ref).norm() / ref.norm()) < 2e-2
