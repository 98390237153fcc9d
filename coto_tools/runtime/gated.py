"""The gated LoRA runtime: adapters injected into a torch model, switched by per-branch gates.

Each wrapped ``nn.Linear`` computes ``base(x) + Σ_j g_j · s_j · B_j(A_j(x))`` over the adapters it
holds. Gates are plain floats (or per-row tensors) set in O(1) without copying weights; a gate
of exactly 0 skips the branch: no compute and no autograd graph, so an inactive adapter gets no
gradient. Removing the adapters puts the original ``nn.Linear`` objects back, so the base model
is restored bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.errors import OptionError

Gate = float | torch.Tensor


class GatedLoraLinear(nn.Module):
    """``base(x) + Σ_j gate_j · scaling_j · B_j(A_j(dropout(x)))`` around one ``nn.Linear``."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self.alpha: dict[str, float] = {}
        self.rslora: dict[str, bool] = {}
        self.gates: dict[str, Gate] = {}
        self.dropout_p = 0.0

    @property
    def in_features(self) -> int:
        return int(self.base.in_features)

    @property
    def out_features(self) -> int:
        return int(self.base.out_features)

    def add(
        self, name: str, mod: LoraModule, *, trainable: bool = False, gate: float = 1.0
    ) -> None:
        if mod.in_features != self.in_features or mod.out_features != self.out_features:
            raise OptionError(
                f"adapter shape ({mod.out_features} x {mod.in_features}) does not fit the Linear "
                f"({self.out_features} x {self.in_features})"
            )
        dtype = self.base.weight.dtype
        device = self.base.weight.device
        self.lora_A[name] = nn.Parameter(
            mod.A.detach().to(device=device, dtype=dtype).clone(), requires_grad=trainable
        )
        self.lora_B[name] = nn.Parameter(
            mod.B.detach().to(device=device, dtype=dtype).clone(), requires_grad=trainable
        )
        self.scaling[name] = mod.scaling
        self.alpha[name] = float(mod.alpha)
        self.rslora[name] = mod.use_rslora
        self.gates[name] = gate

    def remove_adapter(self, name: str) -> None:
        del self.lora_A[name]
        del self.lora_B[name]
        for d in (self.scaling, self.alpha, self.rslora, self.gates):
            d.pop(name, None)

    def export(self, name: str) -> LoraModule:
        return LoraModule(
            A=self.lora_A[name].detach().cpu().clone(),
            B=self.lora_B[name].detach().cpu().clone(),
            alpha=self.alpha[name],
            use_rslora=self.rslora[name],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for name, gate in self.gates.items():
            if isinstance(gate, float) and gate == 0.0:
                continue
            h = x
            if self.dropout_p > 0.0 and self.training:
                h = F.dropout(h, p=self.dropout_p, training=True)
            branch = F.linear(F.linear(h, self.lora_A[name]), self.lora_B[name])
            if isinstance(gate, torch.Tensor):
                # per-row gates: shape (batch,) -> broadcast over the remaining dims
                g = gate.to(branch.dtype).view(-1, *([1] * (branch.ndim - 1)))
                out = out + (g * self.scaling[name]) * branch
            else:
                out = out + (gate * self.scaling[name]) * branch
        return out


def _get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, child


class GatedModel:
    """Handle on a model with gated LoRA branches injected. Create with :func:`inject`."""

    def __init__(self, model: nn.Module, prefix: str = "") -> None:
        self.model = model
        self.prefix = prefix
        self.layers: dict[str, GatedLoraLinear] = {}
        self.adapter_names: list[str] = []

    # -- building -----------------------------------------------------------------------
    def _wrap(self, module_name: str) -> GatedLoraLinear:
        if module_name in self.layers:
            return self.layers[module_name]
        path = self.prefix + module_name
        try:
            target = self.model.get_submodule(path)
        except AttributeError as exc:
            raise OptionError(f"module {module_name}: not found in the model") from exc
        if not isinstance(target, nn.Linear):
            raise OptionError(
                f"module {module_name}: is a {type(target).__name__}, only nn.Linear is supported"
            )
        parent, child = _get_parent(self.model, path)
        wrapper = GatedLoraLinear(target)
        setattr(parent, child, wrapper)
        self.layers[module_name] = wrapper
        return wrapper

    def add_adapter(
        self,
        adapter: LoraAdapter,
        name: str = "default",
        *,
        trainable: bool = False,
        gate: float = 1.0,
    ) -> None:
        if name in self.adapter_names:
            raise OptionError(f"adapter name {name!r} is already injected")
        missing = [m for m in adapter.modules if not self._has(m)]
        if missing:
            raise OptionError(
                f"{adapter.source}: {len(missing)} module(s) not found in the model, "
                f"e.g. {missing[0]}"
            )
        for mod_name, mod in adapter.modules.items():
            self._wrap(mod_name).add(name, mod, trainable=trainable, gate=gate)
        self.adapter_names.append(name)

    def _has(self, module_name: str) -> bool:
        if module_name in self.layers:
            return True
        try:
            self.model.get_submodule(self.prefix + module_name)
        except AttributeError:
            return False
        return True

    def remove(self) -> nn.Module:
        """Put the original ``nn.Linear`` modules back; returns the restored model."""
        for module_name, wrapper in self.layers.items():
            parent, child = _get_parent(self.model, self.prefix + module_name)
            setattr(parent, child, wrapper.base)
        self.layers.clear()
        self.adapter_names.clear()
        return self.model

    # -- gates --------------------------------------------------------------------------
    def modules_of(self, adapter: str = "default") -> list[str]:
        return [m for m, w in self.layers.items() if adapter in w.gates]

    def set_gate(self, module: str, value: Gate, adapter: str = "default") -> None:
        w = self.layers[module]
        if adapter not in w.gates:
            raise OptionError(f"module {module} holds no adapter {adapter!r}")
        w.gates[adapter] = float(value) if not isinstance(value, torch.Tensor) else value

    def set_all(self, value: Gate, adapter: str | None = None) -> None:
        for w in self.layers.values():
            for a in w.gates:
                if adapter is None or a == adapter:
                    w.gates[a] = float(value) if not isinstance(value, torch.Tensor) else value

    def set_gates(
        self, gates: Mapping[str, Gate], adapter: str = "default", *, default: Gate | None = 0.0
    ) -> None:
        """Set gates from ``{module: value}``; others get ``default`` (None: unchanged)."""
        unknown = set(gates) - set(self.layers)
        if unknown:
            raise OptionError(f"unknown module(s): {sorted(unknown)[:3]}")
        for m, w in self.layers.items():
            if adapter not in w.gates:
                continue
            if m in gates:
                v = gates[m]
                w.gates[adapter] = float(v) if not isinstance(v, torch.Tensor) else v
            elif default is not None:
                w.gates[adapter] = default

    def set_active(self, modules: Iterable[str], adapter: str = "default") -> None:
        """Switch on exactly ``modules`` (gate 1) of ``adapter``, every other branch of it off."""
        self.set_gates({m: 1.0 for m in modules}, adapter, default=0.0)

    def get_gates(self, adapter: str = "default") -> dict[str, Gate]:
        return {m: w.gates[adapter] for m, w in self.layers.items() if adapter in w.gates}

    def set_dropout(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise OptionError(f"lora dropout must be in [0, 1), got {p}")
        for w in self.layers.values():
            w.dropout_p = p

    # -- parameters ---------------------------------------------------------------------
    def parameters(self, adapter: str = "default") -> list[nn.Parameter]:
        out: list[nn.Parameter] = []
        for w in self.layers.values():
            if adapter in w.lora_A:
                out.extend([w.lora_A[adapter], w.lora_B[adapter]])
        return out

    def extract(
        self,
        adapter: str = "default",
        config: Mapping[str, Any] | None = None,
        source: str = "<trained>",
    ) -> LoraAdapter:
        mods = {m: w.export(adapter) for m, w in self.layers.items() if adapter in w.lora_A}
        return LoraAdapter(mods, config=dict(config or {}), source=source)


def inject(
    model: nn.Module,
    adapter: LoraAdapter | None = None,
    *,
    name: str = "default",
    trainable: bool = False,
    prefix: str = "",
) -> GatedModel:
    """Wrap the model's Linear modules named by ``adapter`` and add its branches (gate 1).

    ``prefix`` is prepended to adapter module names to find them in ``model`` (e.g. when the
    adapter was saved from a wrapper whose names differ by a leading component).
    """
    handle = GatedModel(model, prefix=prefix)
    if adapter is not None:
        handle.add_adapter(adapter, name, trainable=trainable)
    return handle


def fresh_adapter(
    model: nn.Module,
    targets: Iterable[str],
    *,
    rank: int,
    alpha: float,
    generator: torch.Generator,
    use_rslora: bool = False,
    prefix: str = "",
) -> LoraAdapter:
    """A new adapter for ``targets`` initialised as PEFT does: A ~ Kaiming-uniform(a=√5), B = 0."""
    if rank <= 0:
        raise OptionError(f"rank must be positive, got {rank}")
    mods: dict[str, LoraModule] = {}
    for t in targets:
        lin = model.get_submodule(prefix + t)
        if not isinstance(lin, nn.Linear):
            raise OptionError(f"module {t}: is a {type(lin).__name__}, only nn.Linear is supported")
        A = torch.empty(rank, lin.in_features)
        # kaiming_uniform_(a=sqrt(5)) on a (rank, in) matrix: bound = 1/sqrt(in)
        bound = 1.0 / math.sqrt(lin.in_features)
        A.uniform_(-bound, bound, generator=generator)
        B = torch.zeros(lin.out_features, rank)
        mods[t] = LoraModule(A=A, B=B, alpha=alpha, use_rslora=use_rslora)
    return LoraAdapter(mods)
