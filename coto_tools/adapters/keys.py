"""Parse adapter module names into (tower, layer, kind) for the common layouts.

Layouts recognised: BERT/RoBERTa/DeBERTa/DistilBERT (``encoder.layer.N.attention.self.query``),
LLaMA/Mistral/Qwen (``model.layers.N.self_attn.q_proj``), GPT-2 (``transformer.h.N.attn.c_attn``),
CLIP/ViT (``text_model.encoder.layers.N.self_attn.q_proj``), T5 (``encoder.block.N.layer.0.
SelfAttention.q``), BART-style encoder/decoder stacks. Anything else still loads with
``layer=None`` and ``kind=None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ``<prefix>.<container>.<N>.<rest>``: the first numbered layer container in the name.
_LAYER_RE = re.compile(
    r"^(?P<prefix>(?:.*?\.)?)(?P<container>layer|layers|h|block|blocks)\.(?P<idx>\d+)\.(?P<rest>.+)$"
)
_PEFT_PREFIXES = ("base_model.model.",)

# Suffix (last one or two name components) -> kind. Checked in order; the first match wins.
_KIND_RULES: tuple[tuple[str, str], ...] = (
    (r"attention\.output\.dense$", "o"),
    (r"intermediate\.dense$", "up"),
    (r"output\.dense$", "down"),
    (r"attn\.c_proj$", "o"),
    (r"mlp\.c_proj$", "down"),
    (r"(?:^|\.)(?:query|q_proj|query_proj|q_lin|q)$", "q"),
    (r"(?:^|\.)(?:key|k_proj|key_proj|k_lin|k)$", "k"),
    (r"(?:^|\.)(?:value|v_proj|value_proj|v_lin|v)$", "v"),
    (r"(?:^|\.)(?:c_attn|query_key_value|qkv_proj|qkv|W_pack|in_proj|Wqkv)$", "qkv"),
    (r"(?:^|\.)(?:o_proj|out_proj|out_lin|o|dense)$", "o"),
    (r"(?:^|\.)(?:gate_proj|wi_0|w1)$", "gate"),
    (r"(?:^|\.)(?:up_proj|fc1|c_fc|wi|wi_1|lin1|w3|dense_h_to_4h)$", "up"),
    (r"(?:^|\.)(?:down_proj|fc2|wo|lin2|w2|dense_4h_to_h)$", "down"),
)
_CROSS_RE = re.compile(r"EncDecAttention|encoder_attn|crossattention|cross_attn", re.IGNORECASE)

KIND_ORDER = ("q", "k", "v", "qkv", "o", "gate", "up", "down")


@dataclass(frozen=True, order=True)
class ModuleKey:
    """A parsed adapter module name.

    ``tower`` is ``text``/``vision`` (CLIP), ``encoder``/``decoder`` (T5, BART, BERT's encoder)
    or ``main``; ``layer`` is the block index or ``None``; ``kind`` is a short projection name
    (``q``, ``k``, ``v``, ``qkv``, ``o``, ``gate``, ``up``, ``down``; ``cross_`` prefixed for
    cross-attention), the module's own last name component when the layout has a layer index but
    an unfamiliar projection name, or ``None`` when the layout is unknown.
    """

    name: str
    tower: str
    layer: int | None
    kind: str | None

    @property
    def known(self) -> bool:
        return self.layer is not None and self.kind is not None


def strip_peft_prefix(name: str) -> str:
    for p in _PEFT_PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


_TOWER_WORDS = (
    ({"vision", "visual", "image"}, "vision"),
    ({"text", "language"}, "text"),
    ({"decoder"}, "decoder"),
    ({"encoder"}, "encoder"),
)


def _tower(prefix: str) -> str:
    """Tower from whole words of the prefix (``vision_model``: vision; ``context``: not text)."""
    words = set(re.split(r"[._]", prefix.lower()))
    for needles, tower in _TOWER_WORDS:
        if words & needles:
            return tower
    return "main"


def parse_module_name(name: str) -> ModuleKey:
    """Parse ``name`` (with or without PEFT's ``base_model.model.`` prefix) into a ModuleKey."""
    bare = strip_peft_prefix(name)
    m = _LAYER_RE.match(bare)
    if m is None:
        return ModuleKey(name=bare, tower=_tower(bare), layer=None, kind=None)
    rest = m.group("rest")
    # T5 nests ``block.N.layer.M.SelfAttention.q``: the inner ``layer.M`` is a sub-block.
    kind: str | None = None
    for pattern, k in _KIND_RULES:
        if re.search(pattern, rest):
            kind = k
            break
    if kind is None:
        kind = rest.rsplit(".", 1)[-1]
    if _CROSS_RE.search(rest):
        kind = f"cross_{kind}"
    return ModuleKey(
        name=bare, tower=_tower(m.group("prefix")), layer=int(m.group("idx")), kind=kind
    )


def kind_sort_key(kind: str | None) -> tuple[int, str]:
    """Order kinds as q, k, v, qkv, o, gate, up, down, their ``cross_`` forms, then anything
    else alphabetically, then ``None`` (unknown)."""
    if kind is None:
        return (2 * len(KIND_ORDER) + 1, "")
    base = kind.removeprefix("cross_")
    offset = 0 if base == kind else len(KIND_ORDER)
    if base in KIND_ORDER:
        return (KIND_ORDER.index(base) + offset, kind)
    return (2 * len(KIND_ORDER), kind)
