"""Module-name parsing: (tower, layer, kind) for the common layouts, table-driven.

The expected values come from the layouts' real module names (transformers' BERT, RoBERTa,
DeBERTa, DistilBERT, LLaMA, Mistral, Qwen, GPT-2, CLIP, ViT and T5 implementations).
"""

from __future__ import annotations

import pytest

from coto_tools.adapters import kind_sort_key, parse_module_name

# (name, tower, layer, kind)
LAYOUTS = [
    # BERT / RoBERTa
    ("bert.encoder.layer.0.attention.self.query", "encoder", 0, "q"),
    ("bert.encoder.layer.0.attention.self.key", "encoder", 0, "k"),
    ("bert.encoder.layer.0.attention.self.value", "encoder", 0, "v"),
    ("bert.encoder.layer.3.attention.output.dense", "encoder", 3, "o"),
    ("bert.encoder.layer.3.intermediate.dense", "encoder", 3, "up"),
    ("bert.encoder.layer.3.output.dense", "encoder", 3, "down"),
    ("base_model.model.bert.encoder.layer.7.attention.self.query", "encoder", 7, "q"),
    ("roberta.encoder.layer.11.attention.self.value", "encoder", 11, "v"),
    # DeBERTa v2/v3 and v1
    ("deberta.encoder.layer.2.attention.self.query_proj", "encoder", 2, "q"),
    ("deberta.encoder.layer.2.attention.self.key_proj", "encoder", 2, "k"),
    ("deberta.encoder.layer.2.attention.self.value_proj", "encoder", 2, "v"),
    ("deberta.encoder.layer.5.attention.self.in_proj", "encoder", 5, "qkv"),
    # DistilBERT
    ("distilbert.transformer.layer.3.attention.q_lin", "main", 3, "q"),
    ("distilbert.transformer.layer.3.attention.out_lin", "main", 3, "o"),
    ("distilbert.transformer.layer.3.ffn.lin1", "main", 3, "up"),
    ("distilbert.transformer.layer.3.ffn.lin2", "main", 3, "down"),
    # LLaMA / Mistral / Qwen2
    ("model.layers.0.self_attn.q_proj", "main", 0, "q"),
    ("model.layers.0.self_attn.k_proj", "main", 0, "k"),
    ("model.layers.0.self_attn.v_proj", "main", 0, "v"),
    ("model.layers.0.self_attn.o_proj", "main", 0, "o"),
    ("model.layers.31.mlp.gate_proj", "main", 31, "gate"),
    ("model.layers.31.mlp.up_proj", "main", 31, "up"),
    ("model.layers.31.mlp.down_proj", "main", 31, "down"),
    ("base_model.model.model.layers.4.self_attn.v_proj", "main", 4, "v"),
    # GPT-2 (and Qwen-1's attention)
    ("transformer.h.0.attn.c_attn", "main", 0, "qkv"),
    ("transformer.h.0.attn.c_proj", "main", 0, "o"),
    ("transformer.h.9.mlp.c_fc", "main", 9, "up"),
    ("transformer.h.9.mlp.c_proj", "main", 9, "down"),
    # CLIP
    ("text_model.encoder.layers.0.self_attn.q_proj", "text", 0, "q"),
    ("text_model.encoder.layers.0.self_attn.out_proj", "text", 0, "o"),
    ("vision_model.encoder.layers.3.self_attn.k_proj", "vision", 3, "k"),
    ("vision_model.encoder.layers.3.mlp.fc1", "vision", 3, "up"),
    ("vision_model.encoder.layers.3.mlp.fc2", "vision", 3, "down"),
    # ViT
    ("vit.encoder.layer.0.attention.attention.query", "encoder", 0, "q"),
    ("vit.encoder.layer.0.attention.attention.value", "encoder", 0, "v"),
    ("vit.encoder.layer.0.attention.output.dense", "encoder", 0, "o"),
    ("vit.encoder.layer.0.intermediate.dense", "encoder", 0, "up"),
    ("vit.encoder.layer.0.output.dense", "encoder", 0, "down"),
    # T5 (v1.0 and v1.1 gated FFN), encoder and decoder, cross-attention
    ("encoder.block.0.layer.0.SelfAttention.q", "encoder", 0, "q"),
    ("encoder.block.0.layer.0.SelfAttention.k", "encoder", 0, "k"),
    ("encoder.block.0.layer.0.SelfAttention.v", "encoder", 0, "v"),
    ("encoder.block.0.layer.0.SelfAttention.o", "encoder", 0, "o"),
    ("encoder.block.1.layer.1.DenseReluDense.wi", "encoder", 1, "up"),
    ("encoder.block.1.layer.1.DenseReluDense.wo", "encoder", 1, "down"),
    ("decoder.block.2.layer.0.SelfAttention.v", "decoder", 2, "v"),
    ("decoder.block.2.layer.1.EncDecAttention.q", "decoder", 2, "cross_q"),
    ("decoder.block.2.layer.2.DenseReluDense.wi_0", "decoder", 2, "gate"),
    ("decoder.block.2.layer.2.DenseReluDense.wi_1", "decoder", 2, "up"),
    # BART-style encoder/decoder stacks
    ("model.decoder.layers.1.encoder_attn.k_proj", "decoder", 1, "cross_k"),
    ("model.encoder.layers.1.self_attn.k_proj", "encoder", 1, "k"),
    # a known layer container with an unfamiliar projection: kind is its own name
    ("model.layers.2.self_attn.rotary_thing", "main", 2, "rotary_thing"),
    # unknown layouts still parse, without layer or kind
    ("classifier", "main", None, None),
    ("bert.pooler.dense", "main", None, None),
    ("lm_head", "main", None, None),
    ("some.custom.path.proj", "main", None, None),
]


@pytest.mark.parametrize(("name", "tower", "layer", "kind"), LAYOUTS, ids=[r[0] for r in LAYOUTS])
def test_parse_module_name(name: str, tower: str, layer: int | None, kind: str | None) -> None:
    key = parse_module_name(name)
    assert (key.tower, key.layer, key.kind) == (tower, layer, kind)
    assert key.name == name.removeprefix("base_model.model.")
    assert key.known == (layer is not None and kind is not None)


def test_tower_uses_whole_words() -> None:
    # "context" contains "text" and "vision_tower" contains neither text nor encoder
    assert parse_module_name("context_encoder.layer.0.attention.self.query").tower == "encoder"
    assert parse_module_name("vision_tower.vision_model.encoder.layers.0.mlp.fc1").tower == "vision"
    assert parse_module_name("language_model.model.layers.0.self_attn.q_proj").tower == "text"


def test_kind_order() -> None:
    kinds = ["down", "cross_q", "zz", "q", None, "o", "v", "gate", "k", "up", "qkv"]
    ordered = sorted(kinds, key=kind_sort_key)
    assert ordered == ["q", "k", "v", "qkv", "o", "gate", "up", "down", "cross_q", "zz", None]
