"""``tiny``: a 2-layer random BERT and a synthetic 3-class problem, for tests and smoke runs.

The model is a ``transformers.BertModel`` (vocab 64, hidden 32, 2 layers, 2 heads, intermediate
64, 32 positions, no pooler) with weights drawn from a fixed torch seed, so every build is
identical. The data are token-id sequences generated from a fixed seed: each text is
``[CLS] ... [SEP]`` with a few class-specific "signal" tokens placed among noise tokens. The head
is the label-prompt head of the MiniLM tasks (:mod:`coto_tools.tasks.prompt_head`); the label
prompt of class c is ``[CLS] <label c> <label c> [SEP]`` with a label token that never occurs in
the texts, so the zero-shot model has no head start and LoRA on query/key/value must learn the
mapping. Builds and evaluates in milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import BertConfig

from coto_tools.errors import OptionError
from coto_tools.tasks.prompt_head import EncodedSplit, PromptTask, freeze

PAD, CLS, SEP = 0, 1, 2
N_CLASSES = 3
LABEL_TOKENS = (3, 4, 5)  # one per class, used only in the label prompts
SIGNALS_PER_CLASS = 4
SIGNAL_START = 6  # class c signals: SIGNAL_START + c*SIGNALS_PER_CLASS + [0, SIGNALS_PER_CLASS)
NOISE_START = SIGNAL_START + N_CLASSES * SIGNALS_PER_CLASS
VOCAB = 64
MAX_LEN = 16  # padded length of a text (CLS + body + SEP)
SPLIT_SIZES = {"train": 300, "eval": 96, "quick": 32}
_SPLIT_OFFSET = {"train": 0, "eval": 1, "quick": 2}


def tiny_config() -> BertConfig:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
    )


def generate_split(
    n: int, rng: np.random.Generator, *, n_signal: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` texts: ``(ids (n, MAX_LEN), mask (n, MAX_LEN), labels (n,))``; balanced classes.

    Each body has 6..``MAX_LEN-2`` tokens: ``n_signal`` signal tokens of its class at random
    positions, the rest noise tokens drawn uniformly.
    """
    labels = np.arange(n) % N_CLASSES
    rng.shuffle(labels)
    ids = np.full((n, MAX_LEN), PAD, dtype=np.int64)
    mask = np.zeros((n, MAX_LEN), dtype=np.int64)
    for i, c in enumerate(labels):
        body_len = int(rng.integers(6, MAX_LEN - 1))
        body = rng.integers(NOISE_START, VOCAB, size=body_len)
        pos = rng.choice(body_len, size=n_signal, replace=False)
        start = SIGNAL_START + int(c) * SIGNALS_PER_CLASS
        body[pos] = rng.integers(start, start + SIGNALS_PER_CLASS, size=n_signal)
        seq = np.concatenate([[CLS], body, [SEP]])
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask, labels.astype(np.int64)


class TinyTask(PromptTask):
    """Synthetic 3-class task on a 2-layer random BERT (see module docstring)."""

    name = "tiny"
    labels = ("alpha", "beta", "gamma")
    description = "random 2-layer BERT, synthetic tokens, 3 classes (tests and smoke runs)"
    temperature = 0.05
    base_model_id = "coto-tools/tiny-bert"  # built in code (tiny_config, torch seed model_seed)

    def __init__(self, *, seed: int = 0, model_seed: int = 0) -> None:
        super().__init__()
        if seed < 0 or model_seed < 0:
            raise OptionError(f"tiny: seeds must be >= 0, got seed={seed}, model_seed={model_seed}")
        self.seed = seed
        self.model_seed = model_seed

    def build_model(self) -> nn.Module:
        from transformers import BertModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.model_seed)
            model = BertModel(tiny_config(), add_pooling_layer=False)
        return freeze(model)

    def default_targets(self) -> list[str]:
        return [
            f"encoder.layer.{i}.attention.self.{k}"
            for i in range(2)
            for k in ("query", "key", "value")
        ]

    def _encode_split(self, split: str) -> EncodedSplit:
        rng = np.random.default_rng([self.seed, _SPLIT_OFFSET[split]])
        ids, mask, labels = generate_split(SPLIT_SIZES[split], rng)
        return EncodedSplit(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels))

    def _encode_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([[CLS, t, t, SEP] for t in LABEL_TOKENS], dtype=torch.int64)
        return ids, torch.ones_like(ids)
