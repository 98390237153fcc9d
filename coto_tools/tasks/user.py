"""A task from the user's own pieces: a local transformers model directory and a data file.

``get_task("user", base_model=DIR, data=FILE, ...)`` (the CLI's ``--base-model``/``--data``)
builds one of three tasks, chosen by the data and ``label_prompts``:

- ``text,label`` rows: **sequence classification** with the model's own head
  (``AutoModelForSequenceClassification``); a label is an int class id or a name from the model
  config's ``label2id``; metrics per example (accuracy, cross-entropy, log-prob of the label).
- ``text,label`` rows and ``label_prompts="This is about {}."``: the **label-prompt head** of the
  built-in tasks (:mod:`coto_tools.tasks.prompt_head`) on ``AutoModel``; classes are the data's
  distinct labels, sorted.
- ``text`` rows only: **causal language modelling** (``AutoModelForCausalLM``), scored per token
  through :meth:`~coto_tools.tasks.base.Task.metric_sums`: loss = mean next-token cross-entropy
  (perplexity = exp(loss)), accuracy = next-token argmax accuracy, logprob = mean token log-prob.
- ``prompt,completion``, ``messages`` or ``question``/``context``,``choices``,``answer`` rows:
  causal-LM tasks scored on the completion, the assistant turns, or by choice log-likelihood
  (:mod:`coto_tools.tasks.lm_data`).

Data: JSONL (one object per line) or CSV with a header (``.csv``/``.tsv``); the columns choose
the format (:func:`detect_format`). Splits: ``eval`` and ``train`` are all rows (after ``limit``),
``quick`` the first :data:`N_QUICK`. Texts are truncated to ``max_length`` tokens; every batch
has ``batch_size`` rows (the evaluator's batch size is not used); causal-LM batches hold rows of
similar length (sorted by token count, each batch trimmed to its longest row). Everything is
read offline (``local_files_only``). ``head_from``: a checkpoint whose ``modules_to_save``
tensors (e.g. a trained ``classifier``) are loaded into the base model; they stay on for every
configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coto_tools.errors import OptionError, TaskError
from coto_tools.tasks.base import SPLITS, Batch, MetricSums, Task
from coto_tools.tasks.data_files import DataFormat, detect_format, read_records
from coto_tools.tasks.prompt_head import EncodedSplit, PromptTask, freeze

N_QUICK = 64
# default adapter targets: the attention query/value projections of common layouts
_TARGET_LEAVES = ("query", "value", "q_proj", "v_proj", "q_lin", "v_lin", "q", "v", "c_attn")


@dataclass(frozen=True)
class UserOptions:
    """Options of the user task (see the module docstring)."""

    base_model: str
    data: str
    label_prompts: str | None = None
    max_length: int = 128
    batch_size: int = 16
    limit: int | None = None
    head_from: str | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.max_length <= 8192:
            raise OptionError(f"--max-length must be in [2, 8192], got {self.max_length}")
        if self.batch_size <= 0:
            raise OptionError(f"--batch-size must be positive, got {self.batch_size}")
        if self.limit is not None and self.limit <= 0:
            raise OptionError(f"--limit must be positive, got {self.limit}")
        if self.label_prompts is not None and "{}" not in self.label_prompts:
            raise OptionError(
                f"--label-prompts {self.label_prompts!r}: needs a {{}} for the label, "
                'e.g. "This is about {}."'
            )
        if not Path(self.base_model).is_dir():
            raise TaskError(f"base model {self.base_model}: not a directory")
        if not Path(self.data).is_file():
            raise TaskError(f"--data {self.data}: no such file")


OPTION_NAMES = tuple(f.name for f in fields(UserOptions))


@dataclass(frozen=True)
class Row:
    text: str
    label: str | int | None


def read_rows(
    path: str | Path,
    limit: int | None = None,
    records: list[tuple[int, dict[str, Any]]] | None = None,
) -> list[Row]:
    """Rows of a JSONL or CSV file (``text`` and optional ``label``), all checked."""
    path = Path(path)
    records = read_records(path) if records is None else records
    if "text" not in records[0][1]:
        raise TaskError(
            f"{path}: no 'text' column (columns: {', '.join(records[0][1]) or 'none'}); "
            "expected text[,label], prompt,completion, messages, or question/context,choices,answer"
        )
    rows: list[Row] = []
    for line_no, rec in records:
        text = rec.get("text")
        if not isinstance(text, str) or not text.strip():
            raise TaskError(f"{path}:{line_no}: 'text' missing or empty")
        label = rec.get("label")
        if label == "" or (label is not None and not isinstance(label, (str, int))):
            raise TaskError(f"{path}:{line_no}: label {label!r} is not a string or an integer")
        rows.append(Row(text, label))
    if not rows:
        raise TaskError(f"{path}: no rows")
    has = {r.label is not None for r in rows}
    if len(has) > 1:
        raise TaskError(f"{path}: some rows have a label and some do not")
    return rows[:limit] if limit is not None else rows


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), width), dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
        mask[i, : len(s)] = 1
    return ids, mask


class _UserBase:
    """Model, tokenizer and data loading shared by the three user tasks."""

    auto_class = "AutoModel"

    def _setup(self, opts: UserOptions, rows: list[Row]) -> None:
        self.opts = opts
        self.rows = rows
        self.base_model_id = str(opts.base_model)
        self._tok: Any = None
        self._linear_names: list[str] | None = None

    def tokenizer(self) -> Any:
        if self._tok is None:
            from transformers import AutoTokenizer

            try:
                self._tok = AutoTokenizer.from_pretrained(
                    self.opts.base_model, local_files_only=True
                )
            except (OSError, ValueError) as exc:
                raise TaskError(
                    f"cannot load a tokenizer from {self.opts.base_model}: {exc}"
                ) from exc
        return self._tok

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer()
        enc = tok(texts, truncation=True, max_length=self.opts.max_length)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        return _pad([list(x) for x in enc["input_ids"]], int(pad_id))

    def split_rows(self, split: str) -> list[Row]:
        if split not in SPLITS:
            raise OptionError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        return self.rows[:N_QUICK] if split == "quick" else self.rows

    def load_model(self, dtype: torch.dtype | None = None) -> nn.Module:
        """The base model (``dtype``: loaded in it; ``None``: transformers' default)."""
        import transformers

        from coto_tools.runtime.gated import adaptable

        cls = getattr(transformers, self.auto_class)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        try:
            model = cls.from_pretrained(self.opts.base_model, **kwargs)
        except (OSError, ValueError) as exc:
            raise TaskError(
                f"cannot load {self.opts.base_model} as {self.auto_class}: {exc}"
            ) from exc
        if self.opts.head_from is not None:
            apply_modules_to_save(model, self.opts.head_from)
        self._linear_names = [n for n, m in model.named_modules() if adaptable(m)]
        return freeze(model)

    def build_model_in(self, dtype: torch.dtype | None = None) -> nn.Module:
        return self.load_model(dtype)

    def native_dtype(self) -> torch.dtype | None:
        from transformers import AutoConfig

        from coto_tools.runtime.dtype import config_dtype

        try:
            cfg = AutoConfig.from_pretrained(self.opts.base_model, local_files_only=True)
        except (OSError, ValueError):
            return None
        return config_dtype(cfg)

    def default_targets(self) -> list[str]:
        if self._linear_names is None:
            self.load_model()
        names = self._linear_names or []
        return [n for n in names if n.rsplit(".", 1)[-1] in _TARGET_LEAVES]


def apply_modules_to_save(model: nn.Module, checkpoint: str | Path) -> list[str]:
    """Load ``checkpoint``'s ``modules_to_save`` tensors into ``model`` (names and shapes
    checked); returns the state-dict keys set."""
    from coto_tools.adapters import modules_to_save_state_dict, open_checkpoint
    from coto_tools.adapters.lora import LoraAdapter

    extra = open_checkpoint(checkpoint).extra_tensors()
    sd = modules_to_save_state_dict(LoraAdapter({}, modules_to_save=extra))
    own = model.state_dict()
    bad = [k for k in sd if k not in own or own[k].shape != sd[k].shape]
    if bad:
        raise TaskError(
            f"{checkpoint}: modules_to_save tensor(s) {bad[:3]} do not fit the base model "
            f"({type(model).__name__}); e.g. a classifier trained for another label count"
        )
    model.load_state_dict({k: t.to(own[k].dtype) for k, t in sd.items()}, strict=False)
    return sorted(sd)


class _EncodedTask(_UserBase, Task):
    """Batches of a split encoded once: ``input_ids``/``attention_mask`` and per-row labels."""

    def __init__(self) -> None:
        self._enc: dict[str, EncodedSplit] = {}

    def _labels(self, rows: list[Row]) -> torch.Tensor:
        raise NotImplementedError

    def encoded(self, split: str) -> EncodedSplit:
        if split not in self._enc:
            rows = self.split_rows(split)
            ids, mask = self.tokenize([r.text for r in rows])
            self._enc[split] = EncodedSplit(ids, mask, self._labels(rows))
        return self._enc[split]

    def _batch(self, enc: EncodedSplit, idx: torch.Tensor | slice) -> Batch:
        ids, mask = enc.input_ids[idx], enc.attention_mask[idx]
        width = max(1, int(mask.sum(dim=1).max())) if mask.shape[0] else ids.shape[1]
        return Batch(
            {"input_ids": ids[:, :width], "attention_mask": mask[:, :width]}, enc.labels[idx]
        )

    def batches(self, split: str, batch_size: int = 64) -> list[Batch]:
        enc = self.encoded(split)
        bs = self.opts.batch_size
        return [self._batch(enc, slice(i, i + bs)) for i in range(0, len(enc), bs)]

    def train_size(self) -> int:
        return len(self.rows)

    def train_batch(self, indices: np.ndarray) -> Batch:
        enc = self.encoded("train")
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if idx.ndim != 1 or (len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(enc))):
            raise OptionError(f"train indices must be a 1-d array in [0, {len(enc)})")
        return self._batch(enc, idx)

    def split_sizes(self) -> dict[str, int]:
        return {s: len(self.split_rows(s)) for s in SPLITS}

    def build_model(self) -> nn.Module:
        return self.load_model()


class SequenceClassificationTask(_EncodedTask):
    """``text,label`` with the model's own classification head (see module docstring)."""

    auto_class = "AutoModelForSequenceClassification"

    def __init__(self, opts: UserOptions, rows: list[Row]) -> None:
        super().__init__()
        self._setup(opts, rows)
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(opts.base_model, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TaskError(f"cannot read the model config of {opts.base_model}: {exc}") from exc
        self.n_classes = int(cfg.num_labels)
        self.label2id = {str(k): int(v) for k, v in (cfg.label2id or {}).items()}
        id2label = {int(k): str(v) for k, v in (cfg.id2label or {}).items()}
        self.labels = tuple(id2label.get(i, str(i)) for i in range(self.n_classes))
        self.name = f"user:{Path(opts.data).name}"
        self.description = f"{opts.base_model} (sequence classification) on {opts.data}"
        self._labels(rows)  # fail early on an unknown label

    def _label_id(self, label: str | int | None) -> int:
        if isinstance(label, str) and label in self.label2id:
            return self.label2id[label]
        try:
            v = int(label)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            v = -1
        if not 0 <= v < self.n_classes:
            raise TaskError(
                f"{self.opts.data}: label {label!r} is neither a name in the model's label2id "
                f"({', '.join(self.label2id) or 'none'}) nor a class id in [0, {self.n_classes})"
            )
        return v

    def _labels(self, rows: list[Row]) -> torch.Tensor:
        return torch.tensor([self._label_id(r.label) for r in rows], dtype=torch.int64)

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(**batch.inputs).logits


class CausalLmTask(_EncodedTask):
    """``text`` rows scored per next token by ``AutoModelForCausalLM`` (see module docstring)."""

    auto_class = "AutoModelForCausalLM"
    labels: tuple[str, ...] = ()

    def __init__(self, opts: UserOptions, rows: list[Row]) -> None:
        super().__init__()
        self._setup(opts, rows)
        self.name = f"user-lm:{Path(opts.data).name}"
        self.description = f"{opts.base_model} (causal LM) on {opts.data}"

    def _labels(self, rows: list[Row]) -> torch.Tensor:
        return torch.zeros(len(rows), dtype=torch.int64)  # per-token targets are the inputs

    def batches(self, split: str, batch_size: int = 64) -> list[Batch]:
        """Rows sorted by token count (longest first), ``batch_size`` a batch, each trimmed to
        its longest row: the sums per token do not depend on the order."""
        enc = self.encoded(split)
        order = torch.sort(-enc.attention_mask.sum(dim=1), stable=True).indices
        bs = self.opts.batch_size
        return [self._batch(enc, order[i : i + bs]) for i in range(0, len(enc), bs)]

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise TaskError(
            f"{self.name}: a causal-LM task is scored per token (metric_sums), not by class "
            "logits; train it with transformers.Trainer and coto_tools.train.callback.CoToCallback"
        )

    def metric_sums(self, model: nn.Module, batch: Batch) -> MetricSums:
        ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target, valid = ids[:, 1:], mask[:, 1:].bool()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        hit = (logits.argmax(dim=-1) == target) & valid
        return MetricSums(
            logprob_sum=float(lp.double()[valid].sum()),
            correct=float(hit.sum()),
            count=int(valid.sum()),
        )


class UserPromptTask(_UserBase, PromptTask):
    """``text,label`` rows with the label-prompt head: classes = sorted distinct labels."""

    def __init__(self, opts: UserOptions, rows: list[Row]) -> None:
        PromptTask.__init__(self)
        self._setup(opts, rows)
        self.labels = tuple(sorted({str(r.label) for r in rows}))
        if len(self.labels) < 2:
            raise TaskError(f"{opts.data}: the label-prompt head needs at least 2 labels")
        self.name = f"user-prompt:{Path(opts.data).name}"
        self.description = f"{opts.base_model} (label prompts) on {opts.data}"

    def build_model(self) -> nn.Module:
        return self.load_model()

    def _encode_split(self, split: str) -> EncodedSplit:
        rows = self.split_rows(split)
        ids, mask = self.tokenize([r.text for r in rows])
        labels = torch.tensor([self.labels.index(str(r.label)) for r in rows], dtype=torch.int64)
        return EncodedSplit(ids, mask, labels)

    def _encode_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        template = self.opts.label_prompts or "{}"
        return self.tokenize([template.replace("{}", c) for c in self.labels])

    def batches(self, split: str, batch_size: int = 64) -> list[Batch]:
        return super().batches(split, self.opts.batch_size)


def user_task(
    *,
    base_model: str,
    data: str,
    label_prompts: str | None = None,
    max_length: int = 128,
    batch_size: int = 16,
    limit: int | None = None,
    head_from: str | None = None,
) -> Task:
    """The user task for these options (kind chosen as the module docstring says)."""
    opts = UserOptions(base_model, data, label_prompts, max_length, batch_size, limit, head_from)
    records = read_records(opts.data)
    fmt = detect_format(records[0][1])
    if fmt is not DataFormat.text:
        if label_prompts is not None:
            raise OptionError(f"--label-prompts needs text,label rows; {data} holds {fmt.value}")
        from coto_tools.tasks.lm_data import lm_data_task

        return lm_data_task(opts, fmt, records[: opts.limit] if opts.limit else records)
    rows = read_rows(opts.data, opts.limit, records)
    labelled = rows[0].label is not None
    if label_prompts is not None:
        if not labelled:
            raise OptionError(f"--label-prompts needs a 'label' column in {data}")
        return UserPromptTask(opts, rows)
    if labelled:
        return SequenceClassificationTask(opts, rows)
    return CausalLmTask(opts, rows)
