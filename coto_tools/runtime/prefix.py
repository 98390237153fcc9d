"""Layer-by-layer forward of a BERT-style encoder that reuses the activations of a frozen prefix.

When the next configuration changes no gate below layer ``L``, the inputs of layers ``0..L`` are
those of the previous configuration: only layers ``L..n-1`` are recomputed. Evaluating
configurations in lexicographic order of their gates (lowest layer first) therefore walks a
prefix tree of layers instead of doing full passes (CALIBRATION.md: 126 layer passes instead of
384 for all 64 layer coalitions of a 6-layer model).

Supported models: transformers ``BertModel``-like encoders (``.embeddings``, ``.encoder.layer``,
``._create_attention_masks``) under a :class:`~coto_tools.tasks.prompt_head.PromptTask`, with
every adapter module inside ``encoder.layer.<i>``. :func:`supports_prefix` says whether a
(model, task, module names) triple qualifies; otherwise the evaluator does plain forwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import nn

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


class PrefixRunner:
    """Cached per-layer inputs of the last configuration, for every batch and for the prompts.

    ``run(first_layer)`` recomputes layers ``first_layer..n-1`` (0: from the embeddings) and
    returns the ``(n, C)`` logits of the whole split, batches concatenated.
    """

    def __init__(self, model: nn.Module, task: PromptTask, batches: Sequence[Batch]) -> None:
        self.model = model
        self.task = task
        self.batches = list(batches)
        self.n_layers = len(model.encoder.layer)  # type: ignore[union-attr, arg-type]
        p = self.batches[0].inputs
        # stream 0: the label prompts (identical in every batch); streams 1..: the text batches
        self.streams: list[tuple[torch.Tensor, torch.Tensor]] = [(p[PROMPT_IDS], p[PROMPT_MASK])]
        self.streams += [(b.inputs[TEXT_IDS], b.inputs[TEXT_MASK]) for b in self.batches]
        self._masks: list[torch.Tensor | None] = []
        # _inputs[s][l]: input of layer l for stream s; _inputs[s][n_layers]: last hidden state
        self._inputs: list[list[torch.Tensor | None]] = []
        self.layer_passes = 0

    def _start(self) -> None:
        self._inputs, self._masks = [], []
        for ids, mask in self.streams:
            emb = self.model.embeddings(input_ids=ids)  # type: ignore[operator]
            ext, _ = self.model._create_attention_masks(  # type: ignore[operator]
                attention_mask=mask,
                encoder_attention_mask=None,
                embedding_output=emb,
                encoder_hidden_states=None,
                cache=None,
            )
            self._masks.append(ext)
            self._inputs.append([emb] + [None] * self.n_layers)

    def run(self, first_layer: int) -> torch.Tensor:
        if not self._inputs:
            first_layer = 0
        if first_layer == 0:
            self._start()
        layers = cast(nn.ModuleList, self.model.encoder.layer)  # type: ignore[union-attr]
        for s in range(len(self.streams)):
            acts = self._inputs[s]
            h = acts[first_layer]
            for i in range(first_layer, self.n_layers):
                h = layers[i](h, self._masks[s])
                acts[i + 1] = h
        self.layer_passes += self.n_layers - first_layer
        p_mask = self.streams[0][1]
        prompts = mean_pool(self._inputs[0][self.n_layers], p_mask)  # type: ignore[arg-type]
        out = []
        for s in range(1, len(self.streams)):
            text = mean_pool(self._inputs[s][self.n_layers], self.streams[s][1])  # type: ignore[arg-type]
            out.append(prompt_logits(text, prompts, self.task.temperature))
        return torch.cat(out)

    def clear(self) -> None:
        self._inputs, self._masks = [], []
