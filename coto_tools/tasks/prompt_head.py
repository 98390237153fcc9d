"""The label-prompt head shared by the built-in tasks: no trained head, only the encoder.

``logits[i, c] = cos(pool(enc(text_i)), pool(enc(prompt_c))) / temperature`` where ``pool`` is
the attention-masked mean over tokens and ``enc`` is the (adapted) encoder. The label prompts go
through the same adapted encoder in the same :meth:`PromptTask.logits` call, so adapters change
the class embeddings too (the set-up of CALIBRATION.md; the sentence-embedding zero-shot head of
all-MiniLM-L6-v2).

Subclasses provide the base model and the encoded splits; this class does batching and the head.
Every split is encoded once (lazily) and kept in memory as fixed-length ``(n, L)`` tensors, so
batches are deterministic and identical on every call.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coto_tools.errors import OptionError, TaskError
from coto_tools.tasks.base import SPLITS, Batch, Task

# keys of Batch.inputs: the texts and the label prompts (carried in every batch so that a batch
# moved to a device carries its prompts with it)
TEXT_IDS, TEXT_MASK = "input_ids", "attention_mask"
PROMPT_IDS, PROMPT_MASK = "prompt_input_ids", "prompt_attention_mask"


@dataclass(frozen=True)
class EncodedSplit:
    """A tokenised split: ``input_ids``, ``attention_mask`` ``(n, L)``; ``labels`` ``(n,)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        if self.input_ids.shape != self.attention_mask.shape or self.input_ids.shape[0] != n:
            raise TaskError(
                f"encoded split: input_ids {tuple(self.input_ids.shape)}, attention_mask "
                f"{tuple(self.attention_mask.shape)} and labels {tuple(self.labels.shape)} disagree"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: ``hidden (n, L, d)``, ``mask (n, L)`` -> ``(n, d)``."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def prompt_logits(
    text_emb: torch.Tensor, prompt_emb: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``cos(text_emb (n, d), prompt_emb (C, d)) / temperature`` -> ``(n, C)``."""
    return F.normalize(text_emb, dim=-1) @ F.normalize(prompt_emb, dim=-1).T / temperature


class PromptTask(Task):
    """A classification task whose head is the label-prompt cosine similarity (see module doc)."""

    temperature: float = 0.05

    def __init__(self) -> None:
        self._splits: dict[str, EncodedSplit] = {}
        self._prompts: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- to implement --------------------------------------------------------------------
    @abstractmethod
    def _encode_split(self, split: str) -> EncodedSplit:
        """Tokenise one split (called once per split)."""

    @abstractmethod
    def _encode_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Label prompts tokenised: ``(input_ids, attention_mask)``, each ``(C, Lp)``."""

    # -- data ----------------------------------------------------------------------------
    def encoded(self, split: str) -> EncodedSplit:
        """The split tokenised once and cached in memory."""
        if split not in SPLITS:
            raise OptionError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        if split not in self._splits:
            self._splits[split] = self._encode_split(split)
        return self._splits[split]

    def prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._prompts is None:
            self._prompts = self._encode_prompts()
        return self._prompts

    def _batch(self, enc: EncodedSplit, idx: torch.Tensor | slice) -> Batch:
        p_ids, p_mask = self.prompts()
        ids, mask = enc.input_ids[idx], enc.attention_mask[idx]
        # trim columns that are padding in every row of this batch (deterministic, cheaper)
        width = int(mask.sum(dim=1).max()) if mask.shape[0] else ids.shape[1]
        return Batch(
            inputs={
                TEXT_IDS: ids[:, :width],
                TEXT_MASK: mask[:, :width],
                PROMPT_IDS: p_ids,
                PROMPT_MASK: p_mask,
            },
            labels=enc.labels[idx],
        )

    def batches(self, split: str, batch_size: int = 64) -> list[Batch]:
        if batch_size <= 0:
            raise OptionError(f"batch_size must be positive, got {batch_size}")
        enc = self.encoded(split)
        return [self._batch(enc, slice(i, i + batch_size)) for i in range(0, len(enc), batch_size)]

    def document_units(self, split: str) -> int:
        return len(self.encoded(split))

    def document_batches(self, split: str, groups: int, batch_size: int = 64) -> list[list[Batch]]:
        """Documents dealt round-robin (document ``i`` to group ``i mod groups``, in split
        order), each group in batches of ``batch_size``."""
        enc = self.encoded(split)
        if not 1 <= groups <= len(enc):
            raise OptionError(
                f"task {self.name}: split {split!r} has {len(enc)} documents; it cannot be cut "
                f"into {groups} groups of documents"
            )
        if batch_size <= 0:
            raise OptionError(f"batch_size must be positive, got {batch_size}")
        out = []
        for g in range(groups):
            idx = torch.arange(g, len(enc), groups)
            out.append(
                [self._batch(enc, idx[i : i + batch_size]) for i in range(0, len(idx), batch_size)]
            )
        return out

    def train_size(self) -> int:
        return len(self.encoded("train"))

    def train_batch(self, indices: np.ndarray) -> Batch:
        enc = self.encoded("train")
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if idx.ndim != 1 or (len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(enc))):
            raise OptionError(f"train indices must be a 1-d array in [0, {len(enc)})")
        return self._batch(enc, idx)

    def split_sizes(self) -> dict[str, int]:
        return {s: len(self.encoded(s)) for s in SPLITS}

    # -- head ----------------------------------------------------------------------------
    def embed(self, model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled last hidden state of ``model`` (a transformers encoder) -> ``(n, d)``."""
        out = model(input_ids=input_ids, attention_mask=mask)
        return mean_pool(out.last_hidden_state, mask)

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x = batch.inputs
        text = self.embed(model, x[TEXT_IDS], x[TEXT_MASK])
        prompts = self.embed(model, x[PROMPT_IDS], x[PROMPT_MASK])
        return prompt_logits(text, prompts, self.temperature)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no ``requires_grad`` anywhere: the frozen base model of a task."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
