"""Bad inputs of issue 16: inputs that would be lost, inputs that hung the tool, user code and
JSON files that gave tracebacks, evaluation logs that no longer match.

Each case runs the command line (:func:`coto_tools.cli.main`, in process) inside a folder of
small inputs (the tiny task's modules), which is also the working directory, and must give exit
code 2, exactly one line on stderr (``coto-tools: error: ...``, naming what was wrong), no
traceback, and leave every byte of that folder and of everything around it as it was: the
snapshot hashes every file's content and lists every folder and link.

The other bad-input corpora are ``tests/test_malformed.py`` (damaged adapter files) and
``tests/test_reliability_cli.py`` (well-formed files used wrongly, bad options);
:func:`test_corpus_size` counts all three (at least 200 cases).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from coto_tools.adapters import save_adapter
from coto_tools.adapters.lora import LoraAdapter, LoraModule
from coto_tools.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HIDDEN = 32
TINY = tuple(
    f"encoder.layer.{i}.attention.self.{k}" for i in (0, 1) for k in ("query", "key", "value")
)
# matches no tiny module name, but backtracks for long enough in any regex engine to hit the
# matching timeout (Python's re would take minutes): an attacker's pattern
HANG = r"(.|..)*\d\d\d"


def adapter(seed: int, names: tuple[str, ...] = TINY, *, rank: int = 4) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    return LoraAdapter(
        {
            n: LoraModule(
                0.3 * torch.randn(rank, HIDDEN, generator=g),
                0.3 * torch.randn(HIDDEN, rank, generator=g),
                alpha=8.0,
            )
            for n in names
        }
    )


def record(seed: int, task: str = "tiny") -> str:
    rec = {"format": "coto-tools/train-run", "task": task, "task_variant": {},
           "method": "lora", "seed": seed, "config": {}}  # fmt: skip
    return json.dumps(rec)


def run_dir(path: Path, seed: int, *, base: str | None = None, **cfg: object) -> Path:
    """A train-run directory (coto.json, train_log.csv) of the tiny task; ``cfg`` edits the
    adapter config afterwards."""
    save_adapter(
        adapter(seed),
        path,
        base_model=base,
        extra_files={"coto.json": record(seed), "train_log.csv": "step,loss\n0,1.0\n"},
    )
    if cfg:
        f = path / "adapter_config.json"
        full = json.loads(f.read_text())
        full.update(cfg)
        f.write_text(json.dumps(full))
    return path


PLUGINS = {
    "plug_batches.py": "from coto_tools.tasks.tiny import TinyTask\n"
    "class Bad(TinyTask):\n"
    "    def batches(self, split, batch_size=64):\n"
    "        raise RuntimeError('batches broke')\n"
    "def make():\n    return Bad()\n",
    "plug_build.py": "from coto_tools.tasks.tiny import TinyTask\n"
    "class Bad(TinyTask):\n"
    "    def build_model(self):\n"
    "        raise MemoryError('no memory for the model')\n"
    "def make():\n    return Bad()\n",
    "plug_import.py": "raise RuntimeError('plugin import broke')\n",
    "plug_exit.py": "import sys\nsys.exit(0)\n",
    "plug_fn_raises.py": "def make():\n    raise KeyError('missing thing')\n",
    "plug_fn_exit.py": "import sys\ndef make():\n    sys.exit(3)\n",
    "plug_not_task.py": "def make():\n    return 42\n",
    # code that runs but returns malformed data (rather than raising)
    "plug_batches_none.py": "from coto_tools.tasks.tiny import TinyTask\n"
    "class Bad(TinyTask):\n"
    "    def batches(self, split, batch_size=64):\n"
    "        return [None]\n"
    "def make():\n    return Bad()\n",
    "plug_batches_empty.py": "from coto_tools.tasks.tiny import TinyTask\n"
    "class Bad(TinyTask):\n"
    "    def batches(self, split, batch_size=64):\n"
    "        return []\n"
    "def make():\n    return Bad()\n",
    "plug_labels_2d.py": "from coto_tools.tasks.tiny import TinyTask\n"
    "from coto_tools.tasks.base import Batch\n"
    "class Bad(TinyTask):\n"
    "    def batches(self, split, batch_size=64):\n"
    "        return [Batch(b.inputs, b.labels.view(-1, 1).float())\n"
    "                for b in super().batches(split, batch_size)]\n"
    "def make():\n    return Bad()\n",
    "plug_data.py": "from coto_tools.tasks.tiny import TinyTask\n"
    "def make(data):\n    return TinyTask()\n",
    # module:function forms (the folder is put on sys.path)
    "cotoplug_import_mod.py": "raise RuntimeError('module import broke')\n",
    "cotoplug_exit_mod.py": "raise SystemExit(0)\n",
    "cotoplug_attr_mod.py": "import nosuchpackage_xyz\n",
}

META = {"format": "coto-tools/reproduce", "task": "tiny", "quick": True}
DEEP = "[" * 100_000 + "]" * 100_000


def reproduction(path: Path, meta: object = None, **stage_files: str) -> None:
    """A reproduction folder: reproduce.json (``meta``, JSON text as given when a str) and
    stage files given as ``stage__name=text`` (``merge__done.json='...'``)."""
    path.mkdir()
    text = meta if isinstance(meta, str) else json.dumps(META if meta is None else meta)
    (path / "reproduce.json").write_text(text)
    for key, content in stage_files.items():
        stage, name = key.split("__")
        (path / stage).mkdir(exist_ok=True)
        (path / stage / name.replace("_json", ".json")).write_text(content)


def log_dir(path: Path, seed: int, lines: list[str]) -> None:
    """A run directory with a crafted ``shapley/evaluations.jsonl``."""
    run_dir(path, seed)
    (path / "shapley").mkdir()
    (path / "shapley" / "evaluations.jsonl").write_text("".join(x + "\n" for x in lines))


def build_inputs(root: Path) -> None:
    runs = root / "runs"
    runs.mkdir()
    run_dir(runs / "ck0", 0)
    run_dir(runs / "ck1", 1)
    run_dir(root / "ck", 2)
    save_adapter(adapter(3), root / "a.safetensors")
    save_adapter(adapter(4), root / "b.safetensors")
    save_adapter(adapter(5), root / "foreign.safetensors")  # no coto-tools provenance
    save_adapter(adapter(6), root / "ours.safetensors", extra_config={"method": "cat"})
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("the user's own notes\n")
    (root / "f.txt").write_text("a file\n")
    (root / "link_ck0").symlink_to(runs / "ck0", target_is_directory=True)
    llama = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj")
    save_adapter(adapter(7, llama), root / "llama", base_model="meta-llama/tiny")
    save_adapter(adapter(8, ("transformer.h.0.attn.c_attn",)), root / "gpt2", base_model="gpt2")
    run_dir(root / "base_a", 9, base="org/model-a")
    run_dir(root / "base_b", 10, base="org/model-b")
    # hostile or inconsistent adapter configs
    run_dir(root / "hang_alpha", 11, alpha_pattern={HANG: 16})
    run_dir(root / "hang_rank", 12, rank_pattern={HANG: 4})
    run_dir(root / "long_pattern", 13, alpha_pattern={"q" * 5000: 16})
    run_dir(root / "alpha0", 14, lora_alpha=0)
    run_dir(root / "alpha_neg", 15, lora_alpha=-16)
    run_dir(root / "alpha_pattern0", 16, alpha_pattern={"query": 0})
    run_dir(root / "alpha_nan", 17)
    cfg = root / "alpha_nan" / "adapter_config.json"
    cfg.write_text(cfg.read_text().replace('"lora_alpha": 8', '"lora_alpha": NaN'))
    for name, text in PLUGINS.items():
        (root / name).write_text(text)
    (root / "d.jsonl").write_text('{"text": "a b c", "label": 0}\n')
    # JSON files the report and reproduce read, damaged in every way seen
    reproduction(root / "rep_list", "[]")
    reproduction(root / "rep_number", "3")
    reproduction(root / "rep_string", '"tiny"')
    reproduction(root / "rep_deep", DEEP)
    reproduction(root / "rep_nan", '{"task": NaN}')
    reproduction(root / "rep_notask", "{}")
    reproduction(root / "rep_task_number", '{"task": 5}')
    reproduction(root / "rep_invalid", '{"task": "tiny",')
    reproduction(root / "rep_binary", "{}")
    (root / "rep_binary" / "reproduce.json").write_bytes(b'{"task": "\xff"}')
    reproduction(root / "rep_ok")
    reproduction(root / "done_list", train__done_json="[]")
    reproduction(root / "done_number", merge__done_json="1e400")
    reproduction(root / "done_string", shapley__done_json='"done"')
    reproduction(root / "done_deep", lmc__done_json=DEEP)
    reproduction(root / "done_summary_path", merge__done_json='{"summary": "../../f.txt"}')
    reproduction(root / "done_summary_number", merge__done_json='{"summary": 7}')
    for kind, text in (("list", "[]"), ("number", "12"), ("string", '"x"'), ("deep", DEEP),
                       ("nan", '{"merges": [NaN]}'), ("content", '{"merges": 5}'),
                       ("rows", '{"merges": [{"method": 3}]}')):  # fmt: skip
        reproduction(
            root / f"summary_{kind}",
            merge__done_json='{"summary": "summary.json"}',
            merge__summary_json=text,
        )
    # --out of reproduce: a folder whose reproduce.json is damaged, or not a reproduction
    rout = (("rout_list", "[]"), ("rout_number", "7"), ("rout_deep", DEEP),
            ("rout_invalid", "{"), ("rout_invocations", '{"invocations": 5}'))  # fmt: skip
    for name, text in rout:
        (root / name).mkdir()
        (root / name / "reproduce.json").write_text(text)
    # --players-map files
    for name, text in (("pm_deep", DEEP), ("pm_list", '["query"]'), ("pm_invalid", "{"),
                       ("pm_hang", json.dumps({HANG: "x"}))):  # fmt: skip
        (root / f"{name}.json").write_text(text)
    # evaluation logs that must not be resumed
    header = {"format": "coto-tools/shapley-evaluations", "version": 1, "n_players": 6}
    log_dir(root / "log_other_game", 20, [json.dumps(header | {"fingerprint": "adapter-game:0"})])
    log_dir(root / "log_not_a_log", 21, ['{"format": "something else"}'])
    entry = '{"coalition": "000000", "values": {"logprob": 0}}'
    other = json.dumps(header | {"fingerprint": "x"})
    log_dir(root / "log_bad_middle", 22, [other, "{oops", entry])
    log_dir(root / "log_list_line", 23, ["[1, 2]", "[3]"])
    log_dir(root / "log_deep", 24, [DEEP, DEEP])


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    needles: tuple[str, ...]  # substrings of the one error line (case-insensitive)
    family: str


CASES: list[Case] = []


def C(family: str, id: str, argv: str, *needles: str) -> None:
    CASES.append(Case(id, tuple(argv.split()), needles, family))


Q = "--quiet"
# -- never lose an input: an output that is, contains or lies inside an input --------------------
C(
    "loss",
    "merge-out-parent-of-inputs-force",
    "merge runs/ck0 runs/ck1 --out runs --force",
    "contains the input",
    "runs/ck0",
)
C("loss", "merge-out-parent-of-inputs", "merge runs/ck0 runs/ck1 --out runs", "contains the input")
C(
    "loss",
    "merge-out-is-input-dir-force",
    "merge runs/ck0 runs/ck1 --out runs/ck0 --force",
    "is the input",
)
C(
    "loss",
    "merge-out-is-input-weights",
    "merge runs/ck0 runs/ck1 --out runs/ck0/adapter_model.safetensors --force",
    "overwrite an input",
)
C(
    "loss",
    "merge-out-inside-input",
    "merge runs/ck0 runs/ck1 --out runs/ck0/merged",
    "lies inside the input",
)
C(
    "loss",
    "merge-out-symlink-to-input",
    "merge runs/ck0 runs/ck1 --out link_ck0 --force",
    "link_ck0",
    "input",
)
C(
    "loss",
    "merge-input-symlink-out-target",
    "merge link_ck0 runs/ck1 --out runs --force",
    "contains the input",
)
C(
    "loss",
    "merge-out-cwd-force",
    "merge a.safetensors b.safetensors --out . --force",
    "working directory",
)
C(
    "loss",
    "merge-out-cwd-parent",
    "merge a.safetensors b.safetensors --out .. --force",
    "working directory",
)
C(
    "loss",
    "merge-out-foreign-dir-force",
    "merge a.safetensors b.safetensors --out foreign --force",
    "foreign",
    "not written by coto-tools",
)
C(
    "loss",
    "merge-out-foreign-file-force",
    "merge a.safetensors b.safetensors --out foreign.safetensors --force",
    "foreign.safetensors",
    "not written by coto-tools",
)
C(
    "loss",
    "merge-out-plain-file-force",
    "merge a.safetensors b.safetensors --out f.txt --force",
    "f.txt",
    "not written by coto-tools",
)
C(
    "loss",
    "merge-out-foreign-dir",
    "merge a.safetensors b.safetensors --out foreign",
    "foreign",
    "exists",
)
C(
    "loss",
    "write-pruned-onto-input-force",
    "prune ck --write-pruned everyother-even --out ck --force",
    "is the input",
)
C(
    "loss",
    "write-pruned-onto-input",
    "prune ck --write-pruned everyother-even --out ck",
    "is the input",
)
C(
    "loss",
    "write-pruned-out-parent",
    "prune runs/ck0 --write-pruned low --out runs --force",
    "contains the input",
)
C(
    "loss",
    "write-pruned-out-inside",
    "prune runs/ck0 --write-pruned low --out runs/ck0/p",
    "lies inside",
)
C(
    "loss",
    "write-pruned-out-foreign",
    "prune ck --write-pruned low --out foreign --force",
    "not written by coto-tools",
)
C(
    "loss",
    "write-pruned-out-cwd",
    "prune ck --write-pruned low --out . --force",
    "working directory",
)
C(
    "loss",
    "train-out-foreign-force",
    f"train --task tiny --steps 2 {Q} --out foreign --force",
    "not written by coto-tools",
)
C(
    "loss",
    "train-out-cwd-force",
    f"train --task tiny --steps 2 {Q} --out . --force",
    "working directory",
)
C(
    "loss",
    "train-out-plugin-data",
    f'train --task plugin:{{"data":"d.jsonl"}} --steps 2 {Q} --out d.jsonl --force',
    "d.jsonl",
)
C("loss", "shapley-out-is-input", f"shapley ck --out ck {Q}", "is the input")
C("loss", "shapley-out-parent", f"shapley runs/ck0 --out runs {Q}", "contains the input")
C(
    "loss",
    "shapley-out-config-file",
    f"shapley ck --out ck/adapter_config.json {Q}",
    "not a directory",
)
C(
    "loss",
    "shapley-out-plugin-file",
    f"shapley ck --task-plugin plug_data.py:make --data d.jsonl --out d.jsonl {Q}",
    "d.jsonl",
)
C("loss", "shapley-two-out-is-input", f"shapley runs/ck0 runs/ck1 --out runs/ck0 {Q}",
  "is the input")  # fmt: skip
C("loss", "shapley-two-out-parent", f"shapley runs/ck0 runs/ck1 --out runs {Q}",
  "contains the input")  # fmt: skip
C("loss", "prune-out-is-input", f"prune ck --out ck {Q}", "is the input")
C("loss", "prune-out-parent", f"prune runs/ck0 runs/ck1 --out runs {Q}", "contains the input")
C("loss", "lmc-out-is-input", f"lmc runs/ck0 runs/ck1 --out runs/ck0 {Q}", "is the input")
C("loss", "lmc-out-parent", f"lmc runs/ck0 runs/ck1 --out runs {Q}", "contains the input")
C(
    "loss",
    "reproduce-out-foreign",
    f"reproduce --task tiny --quick {Q} --out foreign",
    "foreign",
    "not a coto-tools reproduction",
)
C("loss", "reproduce-out-file", f"reproduce --task tiny --quick {Q} --out f.txt", "not a directory")
C("loss", "report-out-file", "report rep_ok --out f.txt", "f.txt")
# -- never hang: patterns that backtrack without bound, in every command opening the adapter -----
for name in ("hang_alpha", "hang_rank"):
    C("hang", f"inspect-{name}", f"inspect {name}", name, "backtracks")
    C("hang", f"merge-{name}", f"merge {name} ck --out m", name, "backtracks")
    C("hang", f"shapley-{name}", f"shapley {name} {Q} --out s", name, "backtracks")
    C("hang", f"prune-{name}", f"prune {name} {Q} --out p", name, "backtracks")
    C(
        "hang",
        f"write-pruned-{name}",
        f"prune {name} --write-pruned low --out w",
        name,
        "backtracks",
    )
    C("hang", f"lmc-{name}", f"lmc {name} ck {Q} --out l", name, "backtracks")
C("hang", "inspect-long-pattern", "inspect long_pattern", "5000 characters")
C("hang", "merge-long-pattern", "merge long_pattern ck --out m", "5000 characters")
# -- user code (plugins): any failure is one line, no empty output folder left ---------------
for plugin, needle in (("plug_batches.py", "batches() failed"),
                       ("plug_build.py", "build_model"),
                       ("plug_import.py", "plugin import broke"), ("plug_exit.py", "sys.exit(0)"),
                       ("plug_fn_raises.py", "missing thing"), ("plug_fn_exit.py", "sys.exit(3)"),
                       ("plug_not_task.py", "returned a int")):  # fmt: skip
    stem = plugin.removesuffix(".py").removeprefix("plug_")
    C(
        "plugin",
        f"shapley-plugin-{stem}",
        f"shapley ck --task-plugin {plugin}:make {Q}",
        plugin,
        needle,
    )
for plugin, needle in (("plug_batches_none.py", "batches() returned"),
                       ("plug_batches_empty.py", "no batches"),
                       ("plug_labels_2d.py", "labels")):  # fmt: skip
    stem = plugin.removesuffix(".py").removeprefix("plug_")
    C("plugin", f"shapley-plugin-{stem}", f"shapley ck --task-plugin {plugin}:make {Q}", plugin,
      needle)  # fmt: skip
    C("plugin", f"prune-plugin-{stem}", f"prune ck --task-plugin {plugin}:make {Q} --out p",
      plugin, needle)  # fmt: skip
for plugin, needle in (("plug_batches.py", "batches() failed"), ("plug_import.py", "broke"),
                       ("plug_exit.py", "sys.exit")):  # fmt: skip
    stem = plugin.removesuffix(".py").removeprefix("plug_")
    C(
        "plugin",
        f"prune-plugin-{stem}",
        f"prune ck --task-plugin {plugin}:make {Q} --out p",
        plugin,
        needle,
    )
    C(
        "plugin",
        f"lmc-plugin-{stem}",
        f"lmc runs/ck0 runs/ck1 --task-plugin {plugin}:make {Q} --out l",
        plugin,
        needle,
    )
    C(
        "plugin",
        f"merge-eval-plugin-{stem}",
        f"merge runs/ck0 runs/ck1 --eval --task-plugin {plugin}:make --out m",
        plugin,
        needle,
    )
C(
    "plugin",
    "shapley-module-plugin-import-error",
    f"shapley ck --task-plugin cotoplug_import_mod:make {Q}",
    "cotoplug_import_mod",
    "module import broke",
)
C(
    "plugin",
    "shapley-module-plugin-exit",
    f"shapley ck --task-plugin cotoplug_exit_mod:make {Q}",
    "cotoplug_exit_mod",
    "sys.exit(0)",
)
C(
    "plugin",
    "shapley-module-plugin-missing-dependency",
    f"shapley ck --task-plugin cotoplug_attr_mod:make {Q}",
    "cotoplug_attr_mod",
    "nosuchpackage_xyz",
)
C(
    "plugin",
    "prune-module-plugin-import-error",
    f"prune ck --task-plugin cotoplug_import_mod:make {Q} --out p",
    "cotoplug_import_mod",
    "broke",
)
C(
    "plugin",
    "shapley-module-plugin-not-found",
    f"shapley ck --task-plugin cotoplug_nowhere:make {Q}",
    "cotoplug_nowhere",
)
# -- JSON the tool reads: report and reproduce ----------------------------------------------------
for name, needle in (("rep_list", "expected an object, got a list"),
                     ("rep_number", "got an integer"), ("rep_string", "got a string"),
                     ("rep_deep", "nested deeper"), ("rep_nan", "NaN"),
                     ("rep_notask", "missing key 'task'"), ("rep_task_number", "'task' must be"),
                     ("rep_invalid", "invalid JSON"), ("rep_binary", "not UTF-8"),
                     ("done_list", "got a list"), ("done_number", "1e400"),
                     ("done_string", "got a string"), ("done_deep", "nested deeper"),
                     ("done_summary_path", "file name"), ("done_summary_number", "'summary'"),
                     ("summary_list", "got a list"), ("summary_number", "got an integer"),
                     ("summary_string", "got a string"), ("summary_deep", "nested deeper"),
                     ("summary_nan", "NaN"), ("summary_content", "expected content"),
                     ("summary_rows", "expected content")):  # fmt: skip
    C("json", f"report-{name}", f"report {name}", name, needle)
C("json", "report-two-dirs-one-bad", "report rep_ok summary_list --out both", "summary_list")
for name, needle in (("rout_list", "got a list"), ("rout_number", "got an integer"),
                     ("rout_deep", "nested deeper"), ("rout_invalid", "invalid JSON"),
                     ("rout_invocations", "'invocations' must be a list")):  # fmt: skip
    C("json", f"reproduce-{name}", f"reproduce --task tiny --quick {Q} --out {name}", name, needle)
for name, needle in (("pm_deep", "cannot read"), ("pm_list", "expected a JSON object"),
                     ("pm_invalid", "cannot read"), ("pm_hang", "backtracks")):  # fmt: skip
    C("json" if name != "pm_hang" else "hang", f"shapley-players-map-{name}",
      f"shapley ck --players-map {name}.json {Q} --out s", needle)  # fmt: skip
# -- resume only what still matches ---------------------------------------------------------------
C(
    "resume",
    "shapley-log-other-game",
    f"shapley log_other_game {Q}",
    "refusing to resume",
    "--force",
)
C("resume", "shapley-log-not-a-log", f"shapley log_not_a_log {Q}", "not a coto-tools evaluation")
C("resume", "shapley-log-bad-middle-line", f"shapley log_bad_middle {Q}", "line 2")
C("resume", "shapley-log-list-lines", f"shapley log_list_line {Q}", "not a JSON object")
C("resume", "shapley-log-deep", f"shapley log_deep {Q}", "line 1")
# -- merge of unrelated adapters; alpha consistency ------------------------------------------------
C(
    "merge",
    "merge-no-common-module",
    "merge llama gpt2 --out m",
    "no adapter module in common",
    "--allow-different-bases",
)
C("merge", "merge-no-common-module-three", "merge ck llama runs/ck0 --out m", "in common")
C(
    "merge",
    "merge-different-bases",
    "merge base_a base_b --out m",
    "org/model-a",
    "org/model-b",
    "--allow-different-bases",
)
C(
    "merge",
    "merge-different-bases-ties",
    "merge base_a base_b --method ties --out m",
    "different base models",
)
for name, needle in (("alpha0", "lora_alpha"), ("alpha_neg", "lora_alpha"),
                     ("alpha_pattern0", "alpha_pattern"), ("alpha_nan", "NaN")):  # fmt: skip
    C("alpha", f"inspect-{name}", f"inspect {name}", name, needle)
    C("alpha", f"merge-{name}", f"merge {name} ck --out m", name, needle)
C("alpha", "shapley-alpha0", f"shapley alpha0 {Q} --out s", "alpha0", "lora_alpha")
C("alpha", "prune-alpha-neg", f"prune alpha_neg {Q} --out p", "alpha_neg", "lora_alpha")
C(
    "alpha",
    "merge-alpha-option-zero",
    "merge a.safetensors b.safetensors --alpha 0 --out m",
    "--alpha",
)

assert len({c.id for c in CASES}) == len(CASES)
FAMILIES = {"loss", "hang", "plugin", "json", "resume", "merge", "alpha"}


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: folders, links (their target) and files (SHA-256 of the
    bytes, and the mode; a file this user cannot read: its size, time and mode)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            elif os.access(p, os.R_OK):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = f"{digest} {oct(p.stat().st_mode)}"
            else:
                st = p.lstat()
                out[rel] = f"unreadable {st.st_size} {st.st_mtime_ns} {oct(st.st_mode)}"
    return out


def make_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("issue16_inputs") / "in"
    root.mkdir()
    build_inputs(root)
    return root


def copy_inputs(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the inputs, which is also the working directory and on sys.path (for
    the module:function plugins); no bytecode is written next to the plugins."""
    root = tmp_path / "in"
    shutil.copytree(template, root, symlinks=True)
    (root / "link_ck0").unlink()
    (root / "link_ck0").symlink_to(root / "runs" / "ck0", target_is_directory=True)
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m.startswith("cotoplug_")]:
        monkeypatch.delitem(sys.modules, name)
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory)


@pytest.fixture
def workdir(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return copy_inputs(template, tmp_path, monkeypatch)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str, str]:
    capsys.readouterr()
    code: object = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line(code: object, out: str, err: str, needles: tuple[str, ...] = ()) -> None:
    assert code == 2, f"exit {code}; stderr: {err!r}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("coto-tools: error: "), err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(
    case: Case, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    around = workdir.parent
    before = snapshot(around)
    code, out, err = run_cli(list(case.argv), capsys)
    assert_one_line(code, out, err, case.needles)
    assert snapshot(around) == before, "an input, or something beside it, changed"


def test_corpus_size() -> None:
    """Issue 16: at least 200 bad-input cases over the three corpora, every family covered."""
    import test_malformed
    import test_reliability_cli

    assert {c.family for c in CASES} == FAMILIES
    total = len(CASES) + len(test_malformed.CASES) + len(test_reliability_cli.CASES)
    print(f"bad-input corpus: {total} cases ({len(CASES)} here)", file=sys.stderr)
    assert total >= 200
