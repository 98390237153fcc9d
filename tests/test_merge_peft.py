"""coto-tools merges against PEFT's ``add_weighted_adapter`` on a tiny model (skipped without peft).

Factor space must equal PEFT's factors to 1e-6; delta-space methods are compared on ``B @ A``.
PEFT's DARE draws from torch's global RNG, ours from a seeded ``torch.Generator``: at density < 1
the masks are equal only when the global RNG is seeded the same and the modules are visited in
the same order, which the DARE test arranges by calling PEFT's per-module merge itself.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")

from coto_tools.merge import MergeConfig, merge_files  # noqa: E402


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(10, 12)
        self.up_proj = nn.Linear(10, 16)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])


@pytest.fixture(scope="module")
def peft_setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("peft")
    targets = ["q_proj", "up_proj"]
    model = peft.get_peft_model(Tiny(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    model.add_adapter("b", peft.LoraConfig(r=4, lora_alpha=2, target_modules=targets))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    model.save_pretrained(str(tmp / "saved"))
    dirs = [tmp / "saved", tmp / "saved" / "b"]
    assert all((d / "adapter_model.safetensors").is_file() for d in dirs)
    return model, dirs, tmp


def _lora_layers(model):  # type: ignore[no-untyped-def]
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {n[len(prefix) :]: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _peft_merge(model, name: str, ctype: str, weights, **kw):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.add_weighted_adapter(
            ["default", "b"], list(weights), name, combination_type=ctype, **kw
        )
    return {
        n: (m.lora_A[name].weight.detach(), m.lora_B[name].weight.detach(), m.scaling[name])
        for n, m in _lora_layers(model).items()
    }


def _ours(dirs, tmp: Path, tag: str, **cfg):  # type: ignore[no-untyped-def]
    return merge_files(dirs, MergeConfig(**cfg), tmp / f"ours-{tag}").adapter


FACTOR_CASES = [
    ("linear", "linear", {}, (0.7, -1.2)),
    ("ties", "ties", {"density": 0.5}, (1.0, 0.6)),
    ("ties-freq", "ties", {"density": 0.5, "majority_sign": "frequency"}, (1.0, -0.6)),
    ("magnitude_prune", "magnitude-prune", {"density": 0.4}, (0.5, 0.5)),
    ("dare_linear", "dare-linear", {"density": 1.0}, (0.3, 0.9)),
    ("dare_ties", "dare-ties", {"density": 1.0}, (1.0, 1.0)),
]


@pytest.mark.parametrize("tag,method,opts,weights", FACTOR_CASES, ids=[c[0] for c in FACTOR_CASES])
def test_factor_space_equals_peft(peft_setup, tag, method, opts, weights) -> None:  # type: ignore[no-untyped-def]
    model, dirs, tmp = peft_setup
    ctype = {"magnitude-prune": "magnitude_prune", "dare-linear": "dare_linear"}.get(method, method)
    ctype = ctype.replace("dare-ties", "dare_ties")
    kw = {"density": opts["density"]} if "density" in opts else {}
    if "majority_sign" in opts:
        kw["majority_sign_method"] = opts["majority_sign"]
    ref = _peft_merge(model, f"m-{tag}", ctype, weights, **kw)
    ours = _ours(dirs, tmp, tag, method=method, weights=weights, space="factor", **opts)
    assert set(ours.modules) == set(ref)
    for name, (A, B, scaling) in ref.items():
        m = ours.modules[name]
        assert scaling == 1.0 and m.scaling == 1.0
        torch.testing.assert_close(m.A, A, rtol=0, atol=1e-6)
        torch.testing.assert_close(m.B, B, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "method,ctype", [("dare-linear", "dare_linear"), ("dare-ties", "dare_ties")]
)
def test_dare_with_seeded_equal_masks(peft_setup, method, ctype) -> None:  # type: ignore[no-untyped-def]
    model, dirs, tmp = peft_setup
    ours = _ours(
        dirs, tmp, f"seeded-{method}", method=method, weights=(0.8, 1.1), density=0.5, seed=3
    )
    layers = _lora_layers(model)
    torch.manual_seed(3)  # PEFT draws from the global RNG; visit modules in our (file) order
    for name, m in ours.modules.items():
        A, B = model.base_model._generalized_task_arithmetic_weighted_adapter(
            ctype, ["default", "b"], [0.8, 1.1], layers[name], 0.5, "total"
        )
        torch.testing.assert_close(m.A, A, rtol=0, atol=1e-6)
        torch.testing.assert_close(m.B, B, rtol=0, atol=1e-6)


DELTA_CASES = [
    ("cat", {"method": "cat"}, {}, (0.7, -1.2)),
    ("svd", {"method": "svd", "rank": 6}, {"svd_rank": 6}, (0.7, -1.2)),
    (
        "ties_svd",
        {"method": "ties", "space": "delta", "density": 0.5, "rank": 8},
        {"svd_rank": 8, "density": 0.5},
        (1.0, 1.0),
    ),
    (  # unequal weights: PEFT votes on the unweighted deltas (issue 19)
        "ties_svd",
        {"method": "ties", "space": "delta", "density": 0.5, "rank": 8},
        {"svd_rank": 8, "density": 0.5},
        (0.3, 1.7),
    ),
    (
        "ties_svd",
        {"method": "ties", "space": "delta", "density": 0.4, "rank": 8},
        {"svd_rank": 8, "density": 0.4},
        (-0.8, 1.1),
    ),
    (
        "dare_ties_svd",  # density 1: no random drop, the vote and merge alone
        {"method": "dare-ties", "space": "delta", "density": 1.0, "rank": 8},
        {"svd_rank": 8, "density": 1.0},
        (0.3, 1.7),
    ),
    (
        "magnitude_prune_svd",
        {"method": "magnitude-prune", "space": "delta", "density": 0.3, "rank": 8},
        {"svd_rank": 8, "density": 0.3},
        (0.5, -1.5),
    ),
]


@pytest.mark.parametrize(
    "ctype,cfg,kw,weights", DELTA_CASES, ids=[f"{c[0]}-{c[3]}" for c in DELTA_CASES]
)
def test_delta_space_products_equal_peft(peft_setup, ctype, cfg, kw, weights) -> None:  # type: ignore[no-untyped-def]
    model, dirs, tmp = peft_setup
    tag = f"d-{ctype}-" + "_".join(str(w).replace(".", "p") for w in weights)
    ref = _peft_merge(model, tag, ctype, weights, **kw)
    ours = _ours(dirs, tmp, tag, weights=weights, **cfg)
    for name, (A, B, scaling) in ref.items():
        expected = scaling * B @ A
        tol = 1e-5 * float(expected.abs().max())
        torch.testing.assert_close(ours.modules[name].delta(), expected, rtol=0, atol=tol)
        if ctype == "cat":  # PEFT's cat factors are ours exactly
            torch.testing.assert_close(ours.modules[name].A, A, rtol=0, atol=1e-6)
            torch.testing.assert_close(ours.modules[name].B, B, rtol=0, atol=1e-6)


def test_weighted_vote_is_the_other_rule(peft_setup) -> None:  # type: ignore[no-untyped-def]
    """``ties_vote="weighted"`` (weights folded in before the sign vote) is not PEFT's rule: with
    unequal weights it gives another merge; with equal weights the two rules agree."""
    model, dirs, tmp = peft_setup
    cfg = {"method": "ties", "space": "delta", "density": 0.5, "rank": 8}
    ref = _peft_merge(model, "vote-peft", "ties_svd", (0.3, 1.7), svd_rank=8, density=0.5)
    weighted = _ours(dirs, tmp, "vote-w", weights=(0.3, 1.7), ties_vote="weighted", **cfg)
    rel = [
        float((weighted.modules[n].delta() - s * B @ A).norm() / (s * B @ A).norm())
        for n, (A, B, s) in ref.items()
    ]
    assert max(rel) > 0.05  # a real difference, not rounding
    same_a = _ours(dirs, tmp, "vote-eq-w", weights=(1.0, 1.0), ties_vote="weighted", **cfg)
    same_b = _ours(dirs, tmp, "vote-eq-u", weights=(1.0, 1.0), **cfg)
    for n, m in same_a.modules.items():
        torch.testing.assert_close(m.delta(), same_b.modules[n].delta(), rtol=0, atol=1e-6)
