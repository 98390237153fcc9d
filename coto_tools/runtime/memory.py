"""A memory estimate of an evaluator's run, told before the run starts.

``estimate_memory(model, batches)``: the model's parameters and buffers (adapters included) as
they sit now, plus the transient activations of the largest batch (rows x tokens) in inference
mode: one layer's working set ``B·L·(4·hidden + 2·intermediate)`` elements, the attention scores
``B·heads·L²`` of one layer (eager attention; fused kernels need less), and the logits
``B·L·vocab`` of a language-model head in the model's dtype plus two float32 copies (the
scoring casts and takes a log-softmax). Sizes come from the transformers config
(``hidden_size``/``n_embd``, ...); a model without one counts parameters only. Allocator
overhead, the prefix cache (``prefix_cache_mb``, BERT-style tasks) and the framework are not
counted. Measured (``benchmarks/bench_llm_batches.py``): within 4% of the rise in peak resident
memory of a CPU float32 forward of a random LLaMA (hidden 256, vocabulary 32000) at 4 x 256,
8 x 512 and 2 x 1024 tokens, where the logits dominate; not checked on CUDA or for encoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from coto_tools.tasks.base import Batch

_MIB = float(1 << 20)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes: ``model`` (parameters + buffers), ``activations`` (largest batch, see module doc);
    ``rows`` x ``tokens`` the largest batch; ``dtype`` the model's."""

    model: int
    activations: int
    rows: int
    tokens: int
    dtype: str
    device: str

    @property
    def total(self) -> int:
        return self.model + self.activations

    def line(self) -> str:
        return (
            f"memory estimate on {self.device}: model {_fmt(self.model)} ({self.dtype}, adapters "
            f"included) + activations {_fmt(self.activations)} (largest batch {self.rows} x "
            f"{self.tokens} tokens) = {_fmt(self.total)}"
        )


def _fmt(n: int) -> str:
    return f"{n / _MIB / 1024:.2f} GiB" if n >= (1 << 30) else f"{n / _MIB:.1f} MiB"


def _cfg_int(cfg: object, *names: str) -> int | None:
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def estimate_memory(model: nn.Module, batches: Sequence[Batch]) -> MemoryEstimate:
    """The estimate of the module doc for ``model`` evaluating ``batches``."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    params += sum(b.numel() * b.element_size() for b in model.buffers())
    p0 = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = torch.float32 if p0 is None else p0.dtype
    device = "cpu" if p0 is None else str(p0.device)
    size = torch.empty((), dtype=dtype).element_size()
    rows, tokens = 0, 0
    for b in batches:
        ids = b.inputs.get("input_ids")
        if isinstance(ids, torch.Tensor) and ids.ndim == 2:
            if ids.shape[0] * ids.shape[1] > rows * tokens:
                rows, tokens = int(ids.shape[0]), int(ids.shape[1])
    cfg = getattr(model, "config", None)
    hidden = _cfg_int(cfg, "hidden_size", "n_embd", "d_model")
    acts = 0
    if hidden is not None and rows:
        inter = _cfg_int(cfg, "intermediate_size", "n_inner", "d_ff") or 4 * hidden
        heads = _cfg_int(cfg, "num_attention_heads", "n_head") or 1
        get_out = getattr(model, "get_output_embeddings", None)
        lm_head = get_out() if callable(get_out) else None
        vocab = (_cfg_int(cfg, "vocab_size") or 0) if lm_head is not None else 0
        bl = rows * tokens
        acts = bl * (4 * hidden + 2 * inter) * size + rows * heads * tokens * tokens * size
        acts += bl * vocab * (size + 8)
    return MemoryEstimate(params, acts, rows, tokens, str(dtype).removeprefix("torch."), device)


__all__ = ["MemoryEstimate", "estimate_memory"]
