"""Checkpoint I/O against PEFT itself (skipped without peft).

PEFT writes adapters (``save_pretrained``) that coto-tools must read with the same
``ΔW = scaling · B @ A`` as PEFT's own layers hold; coto-tools writes adapters that
``PeftModel.from_pretrained`` must load and run with the same outputs as the PEFT model they
came from and as coto-tools' own runtime (``coto_tools.runtime.inject``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

peft = pytest.importorskip("peft")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

from coto_tools.adapters import (  # noqa: E402
    CotoWarning,
    load_adapter,
    modules_to_save_state_dict,
    save_adapter,
)
from coto_tools.runtime import inject  # noqa: E402

D = 8


class SelfAttn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(D, D)
        self.key = nn.Linear(D, D)
        self.value = nn.Linear(D, D)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = SelfAttn()
        self.output = nn.Module()
        self.output.dense = nn.Linear(D, D)


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = Attention()
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(D, 2 * D)
        self.output = nn.Module()
        self.output.dense = nn.Linear(2 * D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.attention.self
        h = s.query(x) * torch.sigmoid(s.key(x)) + s.value(x)
        x = x + self.attention.output.dense(h)
        return x + self.output.dense(torch.tanh(self.intermediate.dense(x)))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Layer() for _ in range(2)])


class TinyBert(nn.Module):
    """BERT-like module names: ``encoder.layer.N.attention.self.query`` ... + ``classifier``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.classifier = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder.layer:
            x = layer(x)
        return self.classifier(x)


def base_model() -> TinyBert:
    torch.manual_seed(1234)
    return TinyBert().eval()


def peft_model(cfg: LoraConfig, seed: int = 0) -> nn.Module:
    """A PEFT model with every LoRA factor and the classifier copy random and non-zero."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(base_model(), cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return pm.eval()


def peft_deltas(pm: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's own ΔW per LoRA layer: ``layer.scaling * B @ A`` with PEFT's scaling."""
    out = {}
    for name, mod in pm.base_model.model.named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            a = mod.lora_A["default"].weight
            b = mod.lora_B["default"].weight
            out[name] = (mod.scaling["default"] * (b @ a)).detach()
    return out


def save_peft(pm: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(str(path))
    return path


def load_peft(path: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(base_model(), str(path)).eval()


def x_batch() -> torch.Tensor:
    return torch.randn(5, D, generator=torch.Generator().manual_seed(7))


VARIANTS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["query", "value"]),
    "rank_alpha_pattern": dict(
        r=4,
        lora_alpha=8,
        target_modules=["query", "key", "value", "dense"],
        rank_pattern={"encoder.layer.1.attention.self.query": 2, "key": 6},
        alpha_pattern={"value": 3, r"layer\.0\.output\.dense": 5.5},
    ),
    "rslora": dict(
        r=4,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["query", "value", "dense"],
        rank_pattern={"intermediate.dense": 2},
        alpha_pattern={"query": 7},
    ),
}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, LoraConfig]:
    kw = VARIANTS[request.param]
    return request.param, LoraConfig(modules_to_save=["classifier"], **kw)


def test_reads_peft_adapter_with_identical_deltas(variant, tmp_path: Path) -> None:
    label, cfg = variant
    pm = peft_model(cfg)
    path = save_peft(pm, tmp_path / label)
    expected = peft_deltas(pm)
    adapter = load_adapter(path)
    assert set(adapter.modules) == set(expected)
    for name, d in expected.items():
        torch.testing.assert_close(adapter.delta(name), d, rtol=1e-6, atol=1e-6)
    # the same through the file path inside the directory (config beside it)
    again = load_adapter(path / "adapter_model.safetensors")
    for name, d in expected.items():
        torch.testing.assert_close(again.delta(name), d, rtol=1e-6, atol=1e-6)
    # modules_to_save: PEFT -> coto-tools, untouched
    mts = modules_to_save_state_dict(adapter)
    copy = pm.base_model.model.classifier.modules_to_save["default"]
    assert set(mts) == {"classifier.weight", "classifier.bias"}
    assert torch.equal(mts["classifier.weight"], copy.weight.detach())
    assert torch.equal(mts["classifier.bias"], copy.bias.detach())


def test_rslora_scaling_is_alpha_over_sqrt_rank(tmp_path: Path) -> None:
    cfg = LoraConfig(r=4, lora_alpha=16, use_rslora=True, target_modules=["query"])
    adapter = load_adapter(save_peft(peft_model(cfg), tmp_path / "a"))
    m = adapter["encoder.layer.0.attention.self.query"]
    assert m.use_rslora and m.scaling == pytest.approx(16 / 2.0)


def test_written_adapter_loads_in_peft_with_same_outputs(variant, tmp_path: Path) -> None:
    label, cfg = variant
    pm = peft_model(cfg)
    adapter = load_adapter(save_peft(pm, tmp_path / "peft"))
    out = save_adapter(adapter, tmp_path / "coto")
    x = x_batch()
    with torch.no_grad():
        want = pm(x)
        got_peft = load_peft(out)(x)
        # coto-tools' runtime: LoRA branches injected, modules_to_save loaded as plain weights
        model = base_model()
        res = model.load_state_dict(modules_to_save_state_dict(adapter), strict=False)
        assert res.unexpected_keys == []
        inject(model, adapter)
        got_coto = model(x)
    torch.testing.assert_close(got_peft, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_coto, got_peft, rtol=1e-5, atol=1e-5)
    # and the modules_to_save copy that PEFT loaded is ours, bit for bit
    loaded = load_peft(out).base_model.model.classifier.modules_to_save["default"]
    assert torch.equal(loaded.weight, adapter.modules_to_save["base_model.model.classifier.weight"])


def test_modules_to_save_matter(tmp_path: Path) -> None:
    """The outputs test above would pass vacuously if the classifier copy were not loaded."""
    pm = peft_model(
        LoraConfig(r=4, lora_alpha=8, target_modules=["query"], modules_to_save=["classifier"])
    )
    adapter = load_adapter(save_peft(pm, tmp_path / "peft"))
    without = adapter.replace(modules_to_save={})
    out = save_adapter(without, tmp_path / "coto")
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] is None
    x = x_batch()
    with torch.no_grad():
        assert not torch.allclose(load_peft(out)(x), pm(x), atol=1e-3)


def test_bare_file_modules_to_save_reach_peft(tmp_path: Path) -> None:
    """A bare file has no config listing modules_to_save: the writer derives it from the keys."""
    cfg = LoraConfig(
        r=4, lora_alpha=4, target_modules=["query", "key"], modules_to_save=["classifier"]
    )
    pm = peft_model(cfg, seed=3)
    src = save_peft(pm, tmp_path / "peft")
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(src / "adapter_model.safetensors")), str(bare))  # no metadata
    with pytest.warns(CotoWarning, match="alpha = rank"):
        adapter = load_adapter(bare)  # alpha defaults to the rank: 4, as in the PEFT config
    out = save_adapter(adapter, tmp_path / "coto")
    written = json.loads((out / "adapter_config.json").read_text())
    assert written["modules_to_save"] == ["classifier"]
    x = x_batch()
    with torch.no_grad():
        torch.testing.assert_close(load_peft(out)(x), pm(x), rtol=1e-5, atol=1e-5)


def test_adapter_name_in_keys(tmp_path: Path) -> None:
    """Keys as in PEFT's in-memory state dict: ``...lora_A.default.weight``."""
    cfg = LoraConfig(r=3, lora_alpha=6, target_modules=["value", "dense"])
    pm = peft_model(cfg, seed=5)
    d = save_peft(pm, tmp_path / "peft")
    sd = {k: v.detach().clone() for k, v in pm.state_dict().items() if ".lora_" in k}
    assert all(".default.weight" in k for k in sd)
    save_file(sd, str(d / "adapter_model.safetensors"))
    adapter = load_adapter(d)
    expected = peft_deltas(pm)
    assert set(adapter.modules) == set(expected)
    for name, delta in expected.items():
        torch.testing.assert_close(adapter.delta(name), delta, rtol=1e-6, atol=1e-6)


def test_full_target_names_leave_other_modules_alone(tmp_path: Path) -> None:
    """target_modules as full names: a subset adapter is injected only where it has weights."""
    pm = peft_model(LoraConfig(r=4, lora_alpha=8, target_modules=["query"]))
    adapter = load_adapter(save_peft(pm, tmp_path / "peft"))
    sub = adapter.subset(["encoder.layer.0.attention.self.query"])
    loaded = load_peft(save_adapter(sub, tmp_path / "sub"))
    lora_layers = [
        n for n, m in loaded.base_model.model.named_modules() if isinstance(m, LoraLayer)
    ]
    assert lora_layers == ["encoder.layer.0.attention.self.query"]
    x = x_batch()
    model = base_model()
    inject(model, sub)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


class Nested(nn.Module):
    """Two modules whose names are dotted suffixes of each other's."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.inner = nn.Module()
        self.inner.encoder = Encoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in [*self.encoder.layer, *self.inner.encoder.layer]:
            x = layer(x)
        return x


def test_rank_pattern_with_suffix_names(tmp_path: Path) -> None:
    """``encoder.layer.0...query`` also matches ``inner.encoder.layer.0...query`` under PEFT's
    suffix rule; the writer must key the patterns so each module gets its own rank and alpha."""
    from coto_tools.adapters import LoraAdapter, LoraModule

    g = torch.Generator().manual_seed(0)
    names = ["encoder.layer.0.attention.self.query", "inner.encoder.layer.0.attention.self.query"]
    names.append("encoder.layer.1.attention.self.query")
    ranks, alphas = [2, 5, 5], [3.0, 10.0, 10.0]
    mods = {
        n: LoraModule(torch.randn(r, D, generator=g), torch.randn(D, r, generator=g), alpha=a)
        for n, r, a in zip(names, ranks, alphas, strict=True)
    }
    adapter = LoraAdapter(mods)
    out = save_adapter(adapter, tmp_path / "nested")
    torch.manual_seed(9)
    base = Nested().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = PeftModel.from_pretrained(base, str(out)).eval()
    for n, r in zip(names, ranks, strict=True):
        layer = loaded.base_model.model.get_submodule(n)
        assert layer.r["default"] == r
        assert layer.scaling["default"] == pytest.approx(mods[n].scaling)
    x = x_batch()
    torch.manual_seed(9)
    ours = Nested().eval()
    inject(ours, adapter)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), rtol=1e-5, atol=1e-5)


class TinyGPT2(nn.Module):
    """GPT-2 layout with transformers' Conv1D (weight stored (in, out): fan_in_fan_out)."""

    def __init__(self) -> None:
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        self.transformer = nn.Module()
        self.transformer.h = nn.ModuleList()
        blk = nn.Module()
        blk.attn = nn.Module()
        blk.attn.c_attn = Conv1D(3 * D, D)  # (nf=out, nx=in)
        self.transformer.h.append(blk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer.h[0].attn.c_attn(x)


def test_fan_in_fan_out_conv1d(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(TinyGPT2().eval(), cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.normal_()
    name = "transformer.h.0.attn.c_attn"
    adapter = load_adapter(save_peft(pm, tmp_path / "peft"))
    layer = pm.base_model.model.get_submodule(name)
    # PEFT's delta is laid out like Conv1D's weight, (in, out); ours is the linear map (out, in)
    torch.testing.assert_close(adapter.delta(name), layer.get_delta_weight("default").T)
    assert adapter[name].in_features == D and adapter[name].out_features == 3 * D
    out = save_adapter(adapter, tmp_path / "coto")
    assert json.loads((out / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = PeftModel.from_pretrained(TinyGPT2().eval(), str(out))
    x = x_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pm(x), rtol=1e-5, atol=1e-5)
