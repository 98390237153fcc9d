"""Tiny transformers models and data built in code for the user-task tests (helpers only).

Every model is saved with ``save_pretrained`` (plus a word-level BERT tokenizer written from a
vocabulary list) into a directory that acts as ``--base-model``; nothing touches a hub.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "the a cat dog sat ran on mat fast slow sport money vote game team bank election win lose "
    "market share goal match poll party business politics sports this is about"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = len(SPECIAL) + len(WORDS)
LABELS = ("business", "politics", "sports")
TOPIC = {
    "business": "money bank market share",
    "politics": "vote election poll party",
    "sports": "game team goal match",
}


def save_tokenizer(path: Path) -> None:
    from transformers import BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(str(path))


def bert_config(**kw: object):  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kw,
    )


def save_bert_classifier(path: Path, seed: int = 0) -> Path:
    """A random 2-layer ``BertForSequenceClassification`` with 3 named labels."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = bert_config(
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={c: i for i, c in enumerate(LABELS)},
    )
    BertForSequenceClassification(cfg).eval().save_pretrained(str(path))
    save_tokenizer(path)
    return path


def save_bert_encoder(path: Path, seed: int = 0) -> Path:
    from transformers import BertModel

    torch.manual_seed(seed)
    BertModel(bert_config()).eval().save_pretrained(str(path))
    save_tokenizer(path)
    return path


def save_llama(path: Path, seed: int = 0) -> Path:
    """A random 2-layer ``LlamaForCausalLM`` (hidden 16) with the word-level tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(str(path))
    save_tokenizer(path)
    return path


def texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (text, label) pairs: two topic words of the label among filler words."""
    g = torch.Generator().manual_seed(seed)
    filler = "the a cat dog sat ran on mat fast slow".split()
    out = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        topic = TOPIC[label].split()
        words = [filler[int(j)] for j in torch.randint(len(filler), (5,), generator=g)]
        words.insert(int(torch.randint(5, (1,), generator=g)), topic[i % 4])
        words.insert(int(torch.randint(6, (1,), generator=g)), topic[(i + 1) % 4])
        out.append((" ".join(words), label))
    return out


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def peft_adapter(
    base: Path, out: Path, *, seed: int, auto: str = "seq-cls", targets: tuple[str, ...] = ()
) -> object:
    """A PEFT LoRA adapter (random non-zero B; for ``seq-cls`` also a random ``classifier`` in
    ``modules_to_save``) saved with ``save_pretrained``; returns the PEFT model."""
    import transformers
    from peft import LoraConfig, TaskType, get_peft_model

    cls, task_type, default = {
        "seq-cls": (transformers.AutoModelForSequenceClassification, TaskType.SEQ_CLS,
                    ("query", "value")),
        "causal-lm": (transformers.AutoModelForCausalLM, TaskType.CAUSAL_LM,
                      ("q_proj", "v_proj")),
        "encoder": (transformers.AutoModel, TaskType.FEATURE_EXTRACTION, ("query", "value")),
    }[auto]  # fmt: skip
    model = cls.from_pretrained(str(base), local_files_only=True)
    cfg = LoraConfig(
        task_type=task_type, r=2, lora_alpha=4, target_modules=list(targets or default)
    )
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    peft_model.eval()
    peft_model.save_pretrained(str(out))
    return peft_model
