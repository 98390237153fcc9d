"""Issue 16, the behaviours behind the bad-input corpus (``tests/test_reliability_corpus.py``):
the reported data-loss commands keep every input byte for byte; ``--force`` replaces only
coto-tools outputs; a killed replacement's old output comes back; Shapley caps a budget past the
2^n coalitions, refuses to resume a changed game, recomputes non-finite logged values and
counts what it used; ``ray.init`` is bounded; patterns match as PEFT's rule says, in bounded
time; ``--allow-different-bases``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import types
from pathlib import Path

import pytest
from test_reliability_corpus import (  # the corpus' inputs and helpers
    assert_one_line,
    copy_inputs,
    make_template,
    run_cli,
    snapshot,
)

from coto_tools.adapters import load_adapter
from coto_tools.adapters._config import pattern_value
from coto_tools.adapters.atomic import atomic_write_text, remove_stale_temps
from coto_tools.adapters.outguard import coto_written

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SHAPLEY = ["--split", "quick", "--quiet", "--seed", "3"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory)


@pytest.fixture
def workdir(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return copy_inputs(template, tmp_path, monkeypatch)


def hashes(root: Path, *paths: str) -> dict[str, str]:
    """SHA-256 of every file under each of ``paths`` (files or folders, relative to root)."""
    out = {}
    for rel in paths:
        p = root / rel
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


# -- never lose an input: the commands reported in the issue ------------------------------------


@pytest.mark.parametrize(
    ("argv", "inputs"),
    [
        ("merge runs/ck0 runs/ck1 --out runs --force", ("runs/ck0", "runs/ck1")),
        ("prune ck --write-pruned everyother-even --out ck --force", ("ck",)),
        ("merge a.safetensors b.safetensors --out . --force", ("a.safetensors", "b.safetensors")),
        ("merge runs/ck0 runs/ck1 --out link_ck0 --force", ("runs/ck0", "runs/ck1")),
        ("prune ck --write-pruned low --out foreign --force", ("ck", "foreign")),
    ],
    ids=[
        "merge-into-parent",
        "write-pruned-onto-input",
        "merge-into-cwd",
        "merge-into-link",
        "write-pruned-onto-foreign",
    ],  # fmt: skip
)
def test_reported_data_loss_commands_keep_inputs_byte_for_byte(
    argv: str, inputs: tuple[str, ...], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = hashes(workdir, *inputs)
    assert len(before) >= len(inputs)
    code, out, err = run_cli(argv.split(), capsys)
    assert_one_line(code, out, err)
    assert hashes(workdir, *inputs) == before
    assert (workdir / "ck" / "coto.json").is_file() and (workdir / "ck" / "train_log.csv").is_file()


def test_force_replaces_what_coto_tools_wrote(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert coto_written(workdir / "ours.safetensors") and coto_written(workdir / "runs" / "ck0")
    assert not coto_written(workdir / "foreign.safetensors")
    assert not coto_written(workdir / "foreign") and not coto_written(workdir / "link_ck0")
    for out, runs in (("ours.safetensors", [["--force"]]), ("merged", [[], ["--force"]])):
        for extra in runs:
            argv = ["merge", "a.safetensors", "b.safetensors", "--out", out, *extra]
            code, _, err = run_cli(argv, capsys)
            assert code == 0, err
        rec = load_adapter(workdir / out).config["coto"]
        assert rec["method"] == "cat"
    siblings = [p.name for p in workdir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert siblings == []


def test_killed_replacement_old_output_comes_back_or_goes(tmp_path: Path) -> None:
    """A ``--force`` replacement killed between its two renames leaves ``.NAME.old-PID-*`` and
    no ``NAME``: the next write puts the old output back (then replaces it as asked); one
    killed after both renames leaves a stale ``.old-``, which is removed."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a pid that no longer exists
    out = tmp_path / "result.txt"
    old = tmp_path / f".result.txt.old-{pid}-abc"
    old.write_text("previous output")
    assert remove_stale_temps(out) == [] and out.read_text() == "previous output"
    assert not old.exists()
    (tmp_path / f".result.txt.old-{pid}-def").write_text("stale")
    atomic_write_text(out, "new output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]
    assert out.read_text() == "new output"
    live = tmp_path / f".result.txt.old-{os.getppid()}-ghi"  # a live process's: left alone
    live.write_text("x")
    atomic_write_text(out, "again")
    assert live.exists()


# -- Shapley: budget cap, resume only what matches, strict JSON, honest counts ---------------------


def _summary(workdir: Path, out: str) -> dict:
    text = (workdir / out / "shapley.json").read_text()

    def refuse(name: str) -> None:
        raise AssertionError(f"shapley.json holds {name}: not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("estimator", "budget"), [("permutation", "1000000000"), ("kernelshap", "1000000")]
)
def test_budget_past_every_coalition_runs_exact_and_says_so(
    estimator: str, budget: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.perf_counter()
    argv = ["shapley", "ck", "--estimator", estimator, "--budget", budget, "--out", "s", *SHAPLEY]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert time.perf_counter() - t0 < 120
    assert "64 distinct coalitions" in err and "exact" in err
    s = _summary(workdir, "s")
    assert s["estimator"] == "exact" and s["evaluations"] == 64
    assert s["estimator_requested"] == estimator and s["budget_requested"] == int(budget)
    assert "exact, 64 evaluations" in out


def _edit_config(path: Path, **changes: object) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_resume_refused_once_the_adapter_config_changed(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["shapley", "ck", "--estimator", "permutation", "--budget", "12", *SHAPLEY]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    first = _summary(workdir, "ck/shapley")
    _edit_config(workdir / "ck" / "adapter_config.json", lora_alpha=32)
    log = workdir / "ck" / "shapley" / "evaluations.jsonl"
    kept = log.read_bytes()
    code, out, err = run_cli(argv, capsys)
    assert_one_line(code, out, err, ("refusing to resume", "--force"))
    assert log.read_bytes() == kept  # the old log is left as it was
    code, _, err = run_cli([*argv, "--force"], capsys)
    assert code == 0, err
    second = _summary(workdir, "ck/shapley")
    assert second["evaluations_from_log"] == 0
    assert second["v_full"] != first["v_full"]  # alpha 8 -> 32: another game, other values


def test_resume_refused_once_the_data_file_changed(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["shapley", "ck", "--task-plugin", "plug_data.py:make", "--data", "d.jsonl",
            "--estimator", "permutation", "--budget", "8", "--out", "s", *SHAPLEY]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    code, out, err = run_cli(argv, capsys)  # unchanged: resumes, computes nothing
    assert code == 0, err
    used, computed, logged = counts(out)
    assert computed == 0 and logged == used > 2
    with (workdir / "d.jsonl").open("a") as fh:  # edited in place: same path, other content
        fh.write('{"text": "d e f", "label": 1}\n')
    code, out, err = run_cli(argv, capsys)
    assert_one_line(code, out, err, ("refusing to resume",))


def test_non_finite_logged_values_are_recomputed_and_outputs_are_strict_json(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["shapley", "ck", "--estimator", "permutation", "--budget", "12", *SHAPLEY]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    first = _summary(workdir, "ck/shapley")
    log = workdir / "ck" / "shapley" / "evaluations.jsonl"
    lines = log.read_text().splitlines()
    for i in (3, 5):  # two middle lines: NaN, as a hand edit (or an old writer) left them
        entry = json.loads(lines[i])
        entry["values"]["logprob"] = float("nan")
        lines[i] = json.dumps(entry)
    log.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "12 evaluations (2 computed now, 10 from the log)" in out, out
    second = _summary(workdir, "ck/shapley")
    assert second["metrics"]["logprob"]["values"] == first["metrics"]["logprob"]["values"]
    assert second["v_full"] == first["v_full"]


def counts(line: str) -> tuple[int, int, int]:
    """(used, computed now, from the log) of the summary line."""
    m = re.search(r"(\d+) evaluations \((\d+) computed now, (\d+) from the log\)", line)
    assert m is not None, line
    used, computed, logged = (int(x) for x in m.groups())
    assert used == computed + logged, line  # what was used, and nothing else
    return used, computed, logged


def test_summary_counts_only_the_evaluations_used(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["shapley", "ck", "--estimator", "permutation", *SHAPLEY]
    code, out, err = run_cli([*base, "--budget", "20"], capsys)
    assert code == 0, err
    first, computed, _ = counts(out)
    assert computed == first <= 20
    code, out, err = run_cli([*base, "--budget", "12"], capsys)  # a prefix of the first run
    assert code == 0, err
    used, computed, logged = counts(out)
    assert computed == 0 and logged == used <= 12 < first  # not the log's size
    code, out, err = run_cli([*base, "--budget", "40"], capsys)
    assert code == 0, err
    used, computed, logged = counts(out)
    assert logged == first and computed == used - first > 0


# -- never hang: ray.init, patterns -------------------------------------------------------------


def _fake_ray(init_seconds: float) -> types.ModuleType:
    ray = types.ModuleType("ray")
    ray.calls = []  # type: ignore[attr-defined]

    def init(**kw: object) -> None:
        ray.calls.append(kw)  # type: ignore[attr-defined]
        time.sleep(init_seconds)

    ray.init = init  # type: ignore[attr-defined]
    ray.is_initialized = lambda: False  # type: ignore[attr-defined]
    return ray


def test_ray_init_is_bounded() -> None:
    from coto_tools.runtime.executor import ExecutorError
    from coto_tools.runtime.ray_executor import connect

    ray = _fake_ray(30)
    t0 = time.perf_counter()
    with pytest.raises(ExecutorError, match="no answer within 0.5 s"):
        connect(ray, None, timeout=0.5)
    assert time.perf_counter() - t0 < 5
    t0 = time.perf_counter()
    with pytest.raises(ExecutorError, match="127.0.0.1:1"):
        connect(ray, "127.0.0.1:1", timeout=5)  # nothing listens there: refused at once
    assert time.perf_counter() - t0 < 5 and len(ray.calls) == 1  # type: ignore[attr-defined]


def test_ray_address_where_nothing_listens_is_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", _fake_ray(3600))
    before = snapshot(workdir.parent)
    argv = ["shapley", "ck", "--executor", "ray", "--ray-address", "127.0.0.1:1", *SHAPLEY]
    t0 = time.perf_counter()
    code, out, err = run_cli(argv, capsys)
    assert time.perf_counter() - t0 < 60
    assert_one_line(code, out, err, ("127.0.0.1:1",))
    assert snapshot(workdir.parent) == before


NAMES = [f"model.layers.{i}.self_attn.{k}_proj" for i in (0, 1, 11) for k in "qkvo"]
NAMES += ["encoder.layer.0.attention.self.query", "transformer.h.0.attn.c_attn", "lm_head"]
PATTERNS = ["q_proj", "self_attn.q_proj", r"layers\.1\..*", r"layers\.1[0-9]?\.self_attn\.v_proj",
            "^model.layers.0.self_attn.q_proj$", "(q|v)_proj", "attn", "layers.1", r".*\.query",
            "model.layers.11.self_attn.o_proj", "c_attn", "head", "lm_head"]  # fmt: skip


def test_patterns_match_by_peft_rule() -> None:
    """The bounded matcher gives what PEFT's ``re.match(rf"(.*\\.)?({p})$", name)`` gives."""
    import re

    for p in PATTERNS:
        for n in NAMES:
            want = re.match(rf"(.*\.)?({p})$", n) is not None
            assert (pattern_value({p: 1}, n) == 1) is want, (p, n)
    # first matching pattern wins, in order
    assert pattern_value({"q_proj": 1, "self_attn.q_proj": 2}, NAMES[0]) == 1
    assert pattern_value({"nothing": 1}, NAMES[0]) is None


def test_pattern_from_the_issue_loads_at_once(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = workdir / "ck" / "adapter_config.json"
    _edit_config(cfg, alpha_pattern={"(.*)*Z": 64}, rank_pattern={"(.*)*Z": 2})
    t0 = time.perf_counter()
    adapter = load_adapter(workdir / "ck")
    assert time.perf_counter() - t0 < 10
    assert {m.alpha for m in adapter.modules.values()} == {8.0}  # the pattern matches nothing
    code, _, err = run_cli(["inspect", "ck"], capsys)
    assert code == 0, err


# -- merge of adapters made for different models -------------------------------------------------


def test_allow_different_bases_merges_anyway(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["merge", "base_a", "base_b", "--out", "m"], capsys)
    assert_one_line(code, out, err, ("different base models",))
    argv = ["merge", "base_a", "base_b", "--out", "m", "--allow-different-bases"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert len(load_adapter(workdir / "m").modules) == 6
