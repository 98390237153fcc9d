"""Causal-LM data scored on the tokens that matter: completions, assistant turns, choices.

The user task (:mod:`coto_tools.tasks.user`) picks one of these by the data file's columns:

- ``prompt``,``completion``: :class:`PromptCompletionTask`. The sequence is ``prompt +
  completion`` (verbatim: put any separating space in the data); only the completion's tokens are
  scored: loss = mean next-token cross-entropy over them, accuracy = their argmax hit rate,
  logprob = their mean log-probability; ``n`` = completion tokens scored.
- ``messages`` (a list of ``{"role", "content"}``): :class:`ChatTask`. The conversation is
  rendered by the tokenizer's chat template; the tokens of each assistant turn (what the template
  renders for it after the generation prompt, end-of-turn marker included) are scored as above.
- ``question`` and/or ``context``, ``choices`` (a list; in CSV a JSON list), ``answer`` (the
  index of the right choice, or its text): :class:`MultipleChoiceTask`, scored as
  lm-evaluation-harness does: each choice's log-likelihood given ``prompt + " "`` (prompt =
  context and question joined by a newline) is the sum of its tokens' log-probabilities;
  accuracy = argmax of the sums; ``accuracy_norm`` = argmax of the sums divided by the choice's
  length in characters (lm-evaluation-harness's ``acc_norm``), reported beside it; logprob =
  log-softmax of the right choice's sum among the choices (smooth in the adapters, for Shapley),
  loss = -logprob; ``n`` = questions.

Tokenising a scored span: ``ctx = tok(prompt)``, ``whole = tok(prompt + span)`` (no special
tokens); the span's tokens are ``whole[len(ctx):]`` when ``ctx`` is a prefix of ``whole`` (so a
word split across the boundary is tokenised as in running text), else ``tok(span)`` appended.
The tokenizer's BOS token, when it has one, starts every sequence. Sequences longer than
``max_length`` lose tokens from the left (the scored end is kept).

Batches are bucketed by length (rows sorted by token count, each batch trimmed to its longest
row), so little compute goes to padding; per-example outputs (multiple choice) follow that order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from coto_tools.errors import OptionError, TaskError
from coto_tools.tasks.base import Batch, MetricSums, Task
from coto_tools.tasks.data_files import DataFormat
from coto_tools.tasks.user import UserOptions, _pad, _UserBase

T = TypeVar("T")

SCORE_MASK = "score_mask"


def _take(items: Sequence[T], indices: np.ndarray) -> list[T]:
    """``items`` at the training ``indices`` (any shape, flattened); refuses one out of range."""
    idx = [int(i) for i in np.asarray(indices, dtype=np.int64).ravel()]
    if any(not 0 <= i < len(items) for i in idx):
        raise OptionError(f"train indices must be in [0, {len(items)})")
    return [items[i] for i in idx]


@dataclass(frozen=True)
class Scored:
    """One token sequence and which of its tokens are scored (``score[t]``: token ``t`` is
    predicted from tokens ``< t`` and counted)."""

    ids: list[int]
    score: list[bool]

    @property
    def n_scored(self) -> int:
        return sum(self.score)


def scored_sequence(tok: Any, prompt: str, span: str, max_length: int) -> Scored:
    """``BOS + prompt + span`` with the span's tokens scored (see module doc)."""
    ctx = list(tok(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    whole = list(tok(prompt + span, add_special_tokens=False)["input_ids"])
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        cont = whole[len(ctx) :]
    else:
        cont = list(tok(span, add_special_tokens=False)["input_ids"])
    bos = [int(tok.bos_token_id)] if getattr(tok, "bos_token_id", None) is not None else []
    ids = bos + ctx + cont
    score = [False] * (len(ids) - len(cont)) + [True] * len(cont)
    ids, score = ids[-max_length:], score[-max_length:]
    score[0] = False  # nothing predicts the first token
    return Scored([int(i) for i in ids], score)


def _chat_sequence(tok: Any, messages: list[dict[str, str]], max_length: int) -> Scored:
    """The rendered conversation with every assistant turn's tokens scored."""

    def ids_of(msgs: list[dict[str, str]], gen: bool) -> list[int]:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        return [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]

    full = ids_of(messages, False)
    score = [False] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start, end = len(ids_of(messages[:i], True)), ids_of(messages[: i + 1], False)
        if full[: len(end)] != end or ids_of(messages[:i], True) != full[:start]:
            raise TaskError(
                "the chat template does not render a conversation's turns as prefixes of the "
                "whole (the assistant tokens cannot be located); use prompt,completion rows"
            )
        for t in range(start, len(end)):
            score[t] = True
    ids, score = full[-max_length:], score[-max_length:]
    if score:
        score[0] = False
    return Scored(ids, score)


def _text(rec: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    v = rec.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v):
        raise TaskError(f"{where}: {key!r} missing or not a non-empty string")
    return v


class _ScoredLmBase(_UserBase, Task):
    """Causal-LM rows encoded once as :class:`Scored` sequences, batched by length."""

    auto_class = "AutoModelForCausalLM"
    labels: tuple[str, ...] = ()
    kind = "causal LM"

    def __init__(self, opts: UserOptions, records: list[tuple[int, dict[str, Any]]]) -> None:
        self._setup(opts, [])
        self.records = records
        self.name = f"user-lm:{Path(opts.data).name}"
        self.description = f"{opts.base_model} ({self.kind}) on {opts.data}"
        self._seqs: list[Scored] | None = None

    def _encode(self, rec: dict[str, Any], where: str) -> Scored:
        raise NotImplementedError

    def sequences(self) -> list[Scored]:
        if self._seqs is None:
            seqs = []
            for line, rec in self.records:
                where = f"{self.opts.data}:{line}"
                s = self._encode(rec, where)
                if s.n_scored == 0:
                    raise TaskError(f"{where}: no scored tokens (empty, or cut by --max-length)")
                seqs.append(s)
            self._seqs = seqs
        return self._seqs

    def _rows(self, split: str) -> list[Scored]:
        self.split_rows(split)  # checks the split name
        seqs = self.sequences()
        return seqs[:64] if split == "quick" else seqs

    def _batch(self, seqs: list[Scored]) -> Batch:
        pad = self.tokenizer().pad_token_id
        ids, mask = _pad([s.ids for s in seqs], int(pad) if pad is not None else 0)
        score = torch.zeros_like(mask, dtype=torch.bool)
        for i, s in enumerate(seqs):
            score[i, : len(s.score)] = torch.tensor(s.score, dtype=torch.bool)
        inputs = {"input_ids": ids, "attention_mask": mask, SCORE_MASK: score}
        return Batch(inputs, torch.zeros(len(seqs), dtype=torch.int64))

    def batches(self, split: str, batch_size: int = 64) -> list[Batch]:
        seqs = sorted(self._rows(split), key=lambda s: -len(s.ids))  # stable: ties in file order
        bs = self.opts.batch_size
        return [self._batch(seqs[i : i + bs]) for i in range(0, len(seqs), bs)]

    def split_sizes(self) -> dict[str, int]:
        n = len(self.records)
        return {"train": n, "eval": n, "quick": min(n, 64)}

    def train_size(self) -> int:
        return len(self.records)

    def train_batch(self, indices: np.ndarray) -> Batch:
        return self._batch(_take(self.sequences(), indices))

    def build_model(self) -> nn.Module:
        return self.load_model()


class _TokenScoredTask(_ScoredLmBase):
    """Scored per token through :meth:`metric_sums` (sums over the scored tokens)."""

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise TaskError(f"{self.name}: scored per token (metric_sums), not by class logits")

    def metric_sums(self, model: nn.Module, batch: Batch) -> MetricSums:
        lp, hit, valid = token_scores(model, batch)
        return MetricSums(
            logprob_sum=float(lp.double()[valid].sum()),
            correct=float((hit & valid).sum()),
            count=int(valid.sum()),
        )


def token_scores(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, ...]:
    """``(logprob, argmax hit, scored)``, each ``(n, L-1)``, of the tokens ``1..L-1``."""
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = ids[:, 1:]
    lp = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    valid = batch.inputs[SCORE_MASK][:, 1:] & mask[:, 1:].bool()
    return lp, logits.argmax(dim=-1) == target, valid


class PromptCompletionTask(_TokenScoredTask):
    """``prompt,completion`` rows scored on the completion tokens (see module doc)."""

    kind = "prompt/completion"

    def _encode(self, rec: dict[str, Any], where: str) -> Scored:
        prompt = _text(rec, "prompt", where, required=False)
        return scored_sequence(
            self.tokenizer(), prompt, _text(rec, "completion", where), self.opts.max_length
        )


class ChatTask(_TokenScoredTask):
    """``messages`` rows scored on the assistant turns (see module doc)."""

    kind = "chat"

    def _encode(self, rec: dict[str, Any], where: str) -> Scored:
        msgs = rec.get("messages")
        if isinstance(msgs, str):
            try:
                msgs = json.loads(msgs)
            except ValueError:
                msgs = None
        ok = isinstance(msgs, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in msgs
        )  # fmt: skip
        if not ok or not msgs:
            raise TaskError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        if not any(m["role"] == "assistant" for m in msgs):
            raise TaskError(f"{where}: no assistant turn to score")
        tok = self.tokenizer()
        if not getattr(tok, "chat_template", None):
            raise TaskError(
                f"{self.opts.base_model}: the tokenizer has no chat template (messages rows need "
                "one); use prompt,completion rows"
            )
        return _chat_sequence(tok, [dict(m) for m in msgs], self.opts.max_length)


@dataclass(frozen=True)
class Question:
    choices: list[Scored]
    chars: list[int]
    answer: int

    @property
    def width(self) -> int:
        return max(len(c.ids) for c in self.choices)


class MultipleChoiceTask(_ScoredLmBase):
    """``question``/``context``, ``choices``, ``answer`` rows (see module doc): per-question
    logits ``(n, C)`` = summed log-likelihood of each choice (``-inf`` for missing choices)."""

    kind = "multiple choice"

    def __init__(self, opts: UserOptions, records: list[tuple[int, dict[str, Any]]]) -> None:
        super().__init__(opts, records)
        self.name = f"user-mc:{Path(opts.data).name}"
        self._questions: list[Question] | None = None
        self.n_choices = max(len(self._choices(r, f"{opts.data}:{i}")) for i, r in records)
        self.labels = tuple(str(i) for i in range(self.n_choices))
        self._order: dict[str, list[int]] = {}

    @staticmethod
    def _choices(rec: dict[str, Any], where: str) -> list[str]:
        ch = rec.get("choices")
        if isinstance(ch, str):
            try:
                ch = json.loads(ch)
            except ValueError:
                ch = None
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
            raise TaskError(f"{where}: 'choices' must be a list of at least 2 strings")
        return ch

    def questions(self) -> list[Question]:
        if self._questions is None:
            out = []
            tok = self.tokenizer()
            for line, rec in self.records:
                where = f"{self.opts.data}:{line}"
                choices = self._choices(rec, where)
                ctx, q = (_text(rec, k, where, required=False) for k in ("context", "question"))
                prompt = "\n".join(x for x in (ctx, q) if x)
                ans = rec.get("answer")
                if isinstance(ans, str) and ans in choices:
                    ans = choices.index(ans)
                elif isinstance(ans, str) and ans.strip().lstrip("-").isdigit():
                    ans = int(ans)
                if not isinstance(ans, int) or not 0 <= ans < len(choices):
                    raise TaskError(
                        f"{where}: answer {rec.get('answer')!r} is neither a choice index in "
                        f"[0, {len(choices)}) nor one of the choices"
                    )
                seqs = [
                    scored_sequence(tok, prompt, " " + c, self.opts.max_length) for c in choices
                ]
                if any(s.n_scored == 0 for s in seqs):
                    raise TaskError(f"{where}: a choice has no tokens (or --max-length cut it)")
                out.append(Question(seqs, [max(1, len(c)) for c in choices], ans))
            self._questions = out
        return self._questions

    def sequences(self) -> list[Scored]:
        return [s for q in self.questions() for s in q.choices]

    def split_sizes(self) -> dict[str, int]:
        n = len(self.records)
        return {"train": n, "eval": n, "quick": min(n, 64)}

    def _question_batch(self, qs: list[Question]) -> Batch:
        seqs = [s for q in qs for s in q.choices]
        inner = self._batch(seqs)
        row = [i for i, q in enumerate(qs) for _ in q.choices]
        col = [j for q in qs for j in range(len(q.choices))]
        inputs = dict(inner.inputs)
        inputs["mc_row"] = torch.tensor(row, dtype=torch.int64)
        inputs["mc_col"] = torch.tensor(col, dtype=torch.int64)
        return Batch(inputs, torch.tensor([q.answer for q in qs], dtype=torch.int64))

    def _split_order(self, split: str) -> list[int]:
        self.split_rows(split)
        qs = self.questions()
        n = min(len(qs), 64) if split == "quick" else len(qs)
        return sorted(range(n), key=lambda i: -qs[i].width)  # stable: ties in file order

    def batches(self, split: str, batch_size: int = 64) -> list[Batch]:
        """Questions sorted by their longest choice; a batch holds whole questions, at most
        ``batch_size`` choice sequences (at least one question)."""
        qs = self.questions()
        order = self._split_order(split)
        self._order[split] = order
        out: list[Batch] = []
        cur: list[Question] = []
        size = 0
        for i in order:
            k = len(qs[i].choices)
            if cur and size + k > self.opts.batch_size:
                out.append(self._question_batch(cur))
                cur, size = [], 0
            cur.append(qs[i])
            size += k
        if cur:
            out.append(self._question_batch(cur))
        return out

    def train_batch(self, indices: np.ndarray) -> Batch:
        return self._question_batch(_take(self.questions(), indices))

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        lp, _, valid = token_scores(model, batch)
        sums = (lp * valid).sum(dim=1)
        n_q = len(batch)
        out = torch.full((n_q, self.n_choices), float("-inf"), dtype=sums.dtype, device=sums.device)
        out[batch.inputs["mc_row"], batch.inputs["mc_col"]] = sums
        return out

    def extra_metrics(
        self, split: str, logits: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, float]:
        """``accuracy_norm``: argmax of the sums divided by the choices' character lengths."""
        qs = self.questions()
        order = self._order.get(split) or self._split_order(split)
        chars = torch.full((len(order), self.n_choices), 1.0, dtype=torch.float64)
        for r, i in enumerate(order):
            chars[r, : len(qs[i].chars)] = torch.tensor(qs[i].chars, dtype=torch.float64)
        lg = logits.double()
        norm = torch.where(torch.isfinite(lg), lg / chars, torch.full_like(lg, float("-inf")))
        acc = (norm.argmax(dim=-1) == labels).double().mean()
        return {"accuracy_norm": float(acc)}


def lm_data_task(
    opts: UserOptions, fmt: DataFormat, records: list[tuple[int, dict[str, Any]]]
) -> Task:
    """The causal-LM task for ``fmt`` (not :attr:`DataFormat.text`)."""
    cls: Any = {
        DataFormat.prompt_completion: PromptCompletionTask,
        DataFormat.messages: ChatTask,
        DataFormat.multiple_choice: MultipleChoiceTask,
    }[fmt]
    return cls(opts, records)


__all__ = [
    "ChatTask",
    "MultipleChoiceTask",
    "PromptCompletionTask",
    "Scored",
    "lm_data_task",
    "scored_sequence",
]
