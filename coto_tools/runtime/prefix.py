"""Layer-by-layer forward of a BERT-style encoder that reuses cached hidden states of prefixes.

The input of encoder layer ``l`` depends only on the gates of layers ``0..l-1``. The runner keeps
those inputs in a :class:`PrefixCache`: a map ``gates of layers 0..l-1 -> hidden states of every
stream``, least recently used first out, bounded in bytes. A configuration starts at the highest
layer whose prefix was seen before (not only the previous configuration's: the low layers'
configurations repeat across permutations), and recomputes only the layers above it.
Evaluating configurations in lexicographic order of their gates (lowest layer first) walks the
prefix tree depth first, so each tree node is computed once while the cache holds the current
path (CALIBRATION.md: 126 layer passes instead of 384 for all 64 layer coalitions of 6 layers).

Streams: the label prompts, and the split's texts sorted by token count and cut into chunks
trimmed to their longest member, so padding costs little (logits are put back in input order).
Padding positions are masked, so the numbers equal a plain forward up to float rounding.
The embeddings and attention masks do not depend on the gates: computed once, kept outside the
bound. Everything lives on the device of the model and the batches (the bound counts bytes
there: GPU memory when the evaluator runs on CUDA). Supported models: transformers
``BertModel``-like encoders (``.embeddings``, ``.encoder.layer``, ``._create_attention_masks``)
under a :class:`~coto_tools.tasks.prompt_head.PromptTask`, with every adapter module inside
``encoder.layer.<i>``; :func:`supports_prefix` says whether a (model, task, modules) triple
qualifies, otherwise the evaluator does plain forwards.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import cast

import torch
from torch import nn

from coto_tools.errors import OptionError
from coto_tools.tasks.base import Batch, Task
from coto_tools.tasks.prompt_head import (
    PROMPT_IDS,
    PROMPT_MASK,
    TEXT_IDS,
    TEXT_MASK,
    PromptTask,
    mean_pool,
    prompt_logits,
)

_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.")
States = list[torch.Tensor]  # one hidden-state tensor per stream


def module_layer(name: str) -> int | None:
    """Index of the encoder layer holding module ``name`` (``None`` if not in a layer)."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def supports_prefix(model: nn.Module, task: Task, modules: Iterable[str]) -> bool:
    if not isinstance(task, PromptTask) or type(task).embed is not PromptTask.embed:
        return False  # a task with its own encoder call: use its logits as they are
    if not all(hasattr(model, a) for a in ("embeddings", "encoder", "_create_attention_masks")):
        return False
    layers = getattr(model.encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        return False
    return all((i := module_layer(m)) is not None and i < len(layers) for m in modules)


def _nbytes(states: States) -> int:
    return sum(t.numel() * t.element_size() for t in states)


class PrefixCache:
    """LRU map ``prefix key -> hidden states``; the stored tensors never exceed ``max_bytes``.

    :attr:`nbytes` counts the bytes of the stored tensors (``numel * element_size``);
    :attr:`peak_bytes` is its maximum so far. An entry larger than the bound is not stored.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise OptionError(f"prefix cache bound must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._store: OrderedDict[Hashable, tuple[States, int]] = OrderedDict()
        self.nbytes = 0
        self.peak_bytes = 0
        self.hits = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._store

    def get(self, key: Hashable) -> States | None:
        item = self._store.get(key)
        if item is None:
            return None
        self._store.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key: Hashable, states: States) -> None:
        size = _nbytes(states)
        old = self._store.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        if size > self.max_bytes:
            return
        while self._store and self.nbytes + size > self.max_bytes:
            _, (_, freed) = self._store.popitem(last=False)
            self.nbytes -= freed
            self.evictions += 1
        self._store[key] = (states, size)
        self.nbytes += size
        self.peak_bytes = max(self.peak_bytes, self.nbytes)

    def clear(self) -> None:
        self._store.clear()
        self.nbytes = 0


class PrefixRunner:
    """Forward of the whole split with prefix reuse (see module doc).

    ``run(prefixes)``: ``prefixes[l]`` is a hashable key of the gates of layers ``0..l-1``
    (``l = 0..n_layers-1``; equal keys must mean equal gates); the gates must already be set on
    the model. Returns the ``(n, C)`` logits of the split in the order of ``batches``.
    ``chunk``: texts per stream after sorting by length (0: keep the given batches).
    """

    def __init__(
        self,
        model: nn.Module,
        task: PromptTask,
        batches: Sequence[Batch],
        *,
        max_bytes: int = 256 << 20,
        chunk: int = 32,
    ) -> None:
        if chunk < 0:
            raise OptionError(f"chunk must be >= 0, got {chunk}")
        self.model = model
        self.task = task
        self.n_layers = len(model.encoder.layer)  # type: ignore[union-attr, arg-type]
        self.cache = PrefixCache(max_bytes)
        p = batches[0].inputs
        # stream 0: the label prompts (identical in every batch); streams 1..: the texts
        self.streams: list[tuple[torch.Tensor, torch.Tensor]] = [(p[PROMPT_IDS], p[PROMPT_MASK])]
        self.streams += (
            _text_streams(batches, chunk)
            if chunk
            else [(b.inputs[TEXT_IDS], b.inputs[TEXT_MASK]) for b in batches]
        )
        if chunk:
            order = _length_order(torch.cat([_extent(b.inputs[TEXT_MASK]) for b in batches]))
            self._unsort: torch.Tensor | None = torch.argsort(order)
        else:
            self._unsort = None
        self._embedded: States = []
        self._masks: list[torch.Tensor] = []
        self.layer_passes = 0

    def _start(self) -> None:
        """Embeddings and extended attention masks of every stream (gate-independent)."""
        for ids, mask in self.streams:
            emb = self.model.embeddings(input_ids=ids)  # type: ignore[operator]
            ext, _ = self.model._create_attention_masks(  # type: ignore[operator]
                attention_mask=mask,
                encoder_attention_mask=None,
                embedding_output=emb,
                encoder_hidden_states=None,
                cache=None,
            )
            self._embedded.append(emb)
            self._masks.append(ext)

    def start_layer(self, prefixes: Sequence[Hashable]) -> int:
        """The layer a configuration with these prefix keys would start at (0: embeddings)."""
        for layer in range(self.n_layers - 1, 0, -1):
            if prefixes[layer] in self.cache:
                return layer
        return 0

    def run(self, prefixes: Sequence[Hashable]) -> torch.Tensor:
        if len(prefixes) != self.n_layers:
            raise OptionError(f"{len(prefixes)} prefix keys for {self.n_layers} layers")
        if not self._embedded:
            self._start()
        first = self.start_layer(prefixes)
        states = self._embedded if first == 0 else cast(States, self.cache.get(prefixes[first]))
        layers = cast(nn.ModuleList, self.model.encoder.layer)  # type: ignore[union-attr]
        for i in range(first, self.n_layers):
            states = [layers[i](h, m) for h, m in zip(states, self._masks, strict=True)]
            if i + 1 < self.n_layers:
                self.cache.put(prefixes[i + 1], states)
        self.layer_passes += self.n_layers - first
        prompts = mean_pool(states[0], self.streams[0][1])
        texts = torch.cat(
            [mean_pool(h, s[1]) for h, s in zip(states[1:], self.streams[1:], strict=True)]
        )
        logits = prompt_logits(texts, prompts, self.task.temperature)
        return logits if self._unsort is None else logits[self._unsort]

    def clear(self) -> None:
        self.cache.clear()
        self._embedded, self._masks = [], []


def _extent(mask: torch.Tensor) -> torch.Tensor:
    """Per row: 1 + the index of the last unmasked token (0 for an all-padding row)."""
    pos = torch.arange(1, mask.shape[1] + 1, dtype=torch.long, device=mask.device)
    return (mask.ne(0).long() * pos).amax(dim=1) if mask.shape[1] else mask.sum(dim=1)


def _length_order(extent: torch.Tensor) -> torch.Tensor:
    return torch.sort(-extent, stable=True).indices  # longest first, ties in input order


def _text_streams(batches: Sequence[Batch], chunk: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All texts sorted by extent (longest first), in chunks trimmed to their widest row."""
    width = max(int(b.inputs[TEXT_IDS].shape[1]) for b in batches)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]))

    ids = torch.cat([pad(b.inputs[TEXT_IDS]) for b in batches])
    mask = torch.cat([pad(b.inputs[TEXT_MASK]) for b in batches])
    extent = _extent(mask)
    order = _length_order(extent)
    ids, mask, extent = ids[order], mask[order], extent[order]
    out = []
    for i in range(0, len(order), chunk):
        w = max(int(extent[i]), 1)  # the chunk's first row is its longest
        out.append((ids[i : i + chunk, :w], mask[i : i + chunk, :w]))
    return out
