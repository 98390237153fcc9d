"""The gated LoRA runtime: adapters injected into a torch model, switched by per-branch gates.

Each wrapped ``nn.Linear`` computes ``base(x) + Σ_j g_j · s_j · B_j(A_j(x))`` over the adapters it
holds. Gates are plain floats (or per-row tensors) set in O(1) without copying weights; a gate
of exactly 0 skips the branch: no compute and no autograd graph, so an inactive adapter gets no
gradient. Removing the adapters puts the original ``nn.Linear`` objects back, so the base model
is restored bit for bit.

Wrapped layers: ``nn.Linear`` (weight ``(out, in)``) and transformers' GPT-2 ``Conv1D`` (weight
``(in, out)``, PEFT's ``fan_in_fan_out``); adapters are always the linear map ``(out, in)``
(``B @ A``), so a GPT-2 adapter read from PEFT needs no transposing here.

Branch dtype (:func:`branch_dtype`): the branches of a float32 base run in float32; those of a
bfloat16/float16 base keep ``A``, ``B`` in float32, the input is cast up, the branches are added
to the base output in float32 and the sum is cast back once, as PEFT does by default
(``autocast_adapter_dtype=True``). The gated forward then equals PEFT's in the same dtype up to
float rounding of the base layers themselves (tests: bf16 tiny LLaMA/GPT-2 against PEFT).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.errors import OptionError

Gate = float | torch.Tensor
_HALF = (torch.bfloat16, torch.float16)


def branch_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """The dtype adapter branches run in over a base of ``base_dtype``: float32 for half
    precision bases (bfloat16, float16), the base's own dtype otherwise (see module doc)."""
    return torch.float32 if base_dtype in _HALF else base_dtype


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (GPT-2): ``y = x @ W + b``, ``W: (in,
    out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def adaptable(module: nn.Module) -> bool:
    """Whether the gated runtime can wrap ``module`` (``nn.Linear`` or a GPT-2 ``Conv1D``)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of an ``nn.Linear`` or a ``Conv1D``."""
    w = module.weight
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        raise OptionError(f"{type(module).__name__} has no 2-d weight")
    out_f, in_f = (w.shape[1], w.shape[0]) if is_conv1d(module) else (w.shape[0], w.shape[1])
    return int(out_f), int(in_f)


def _not_adaptable(name: str, module: nn.Module) -> OptionError:
    return OptionError(
        f"module {name}: is a {type(module).__name__}; supported: nn.Linear and transformers' "
        "Conv1D (GPT-2)"
    )


class GatedLoraLinear(nn.Module):
    """``base(x) + Σ_j gate_j · scaling_j · B_j(A_j(dropout(x)))`` around one ``nn.Linear`` or
    GPT-2 ``Conv1D``; branches in :func:`branch_dtype` of the base weight."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        if not adaptable(base):
            raise _not_adaptable("base", base)
        self.base = base
        self._out, self._in = linear_shape(base)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self.alpha: dict[str, float] = {}
        self.rslora: dict[str, bool] = {}
        self.gates: dict[str, Gate] = {}
        self.dropout_p = 0.0

    @property
    def in_features(self) -> int:
        return self._in

    @property
    def out_features(self) -> int:
        return self._out

    def add(
        self, name: str, mod: LoraModule, *, trainable: bool = False, gate: float = 1.0
    ) -> None:
        if mod.in_features != self.in_features or mod.out_features != self.out_features:
            raise OptionError(
                f"adapter shape ({mod.out_features} x {mod.in_features}) does not fit the Linear "
                f"({self.out_features} x {self.in_features})"
            )
        weight = cast(torch.Tensor, self.base.weight)  # 2-d: checked in __init__
        dtype = branch_dtype(weight.dtype)
        device = weight.device
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
        out_dtype = out.dtype
        for name, gate in self.gates.items():
            if isinstance(gate, float) and gate == 0.0:
                continue
            A = self.lora_A[name]
            h = x if x.dtype == A.dtype else x.to(A.dtype)
            if self.dropout_p > 0.0 and self.training:
                h = F.dropout(h, p=self.dropout_p, training=True)
            branch = F.linear(F.linear(h, A), self.lora_B[name])
            if isinstance(gate, torch.Tensor):
                # per-row gates: shape (batch,) -> broadcast over the remaining dims
                g = gate.to(branch.dtype).view(-1, *([1] * (branch.ndim - 1)))
                out = out + (g * self.scaling[name]) * branch
            else:
                out = out + (gate * self.scaling[name]) * branch
        return out if out.dtype == out_dtype else out.to(out_dtype)


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
        if not adaptable(target):
            raise _not_adaptable(module_name, target)
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
        """Put the original ``nn.Linear``/``Conv1D`` modules back; returns the restored model."""
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
        if not adaptable(lin):
            raise _not_adaptable(t, lin)
        out_f, in_f = linear_shape(lin)
        A = torch.empty(rank, in_f)
        # kaiming_uniform_(a=sqrt(5)) on a (rank, in) matrix: bound = 1/sqrt(in)
        bound = 1.0 / math.sqrt(in_f)
        A.uniform_(-bound, bound, generator=generator)
        B = torch.zeros(out_f, rank)
        mods[t] = LoraModule(A=A, B=B, alpha=alpha, use_rslora=use_rslora)
    return LoraAdapter(mods)
