"""Tiny causal LMs (LLaMA, GPT-2) with PEFT adapters and data for the LLM tests (helpers only).

Models are random, built from a transformers config and saved with ``save_pretrained`` beside the
word-level tokenizer of :mod:`test_user_task_fixtures` (plus a one-line chat template); nothing
touches a hub. Word-level tokens make hand computations possible: a text's token ids are its
words' vocabulary indices.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from test_user_task_fixtures import SPECIAL, VOCAB, WORDS, save_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# role words are not in the vocabulary: they become [UNK], which is fine for a template
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)
VOCAB_IDS = {w: i for i, w in enumerate(SPECIAL + WORDS)}
UNK = VOCAB_IDS["[UNK]"]


def word_ids(text: str) -> list[int]:
    """Token ids of ``text`` under the word-level tokenizer (no special tokens)."""
    return [VOCAB_IDS.get(w, UNK) for w in text.split()]


def save_chat_tokenizer(path: Path) -> None:
    from transformers import AutoTokenizer

    save_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(path))


def save_llama(path: Path, seed: int = 0, *, layers: int = 2) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    LlamaForCausalLM(cfg).eval().save_pretrained(str(path))
    save_chat_tokenizer(path)
    return path


def save_gpt2(path: Path, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    GPT2LMHeadModel(cfg).eval().save_pretrained(str(path))
    save_chat_tokenizer(path)
    return path


def peft_lm_adapter(
    base: Path, out: Path, *, seed: int, targets: tuple[str, ...], fan_in_fan_out: bool = False
) -> Path:
    """A PEFT LoRA adapter of a causal LM (random non-zero B) saved with ``save_pretrained``."""
    import warnings

    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True)
    cfg = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=2, lora_alpha=4, target_modules=list(targets),
        fan_in_fan_out=fan_in_fan_out,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(str(out))
    return out


def load_peft(base: Path, adapter: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """PEFT's own model of ``adapter`` on ``base`` in ``dtype`` (PEFT's defaults otherwise)."""
    import warnings

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(model, str(adapter)).eval()
