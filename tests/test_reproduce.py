"""``coto-tools reproduce`` / ``report`` end to end on the tiny task, resumability, and the
exactness of the rerun commands."""

from __future__ import annotations

import json
import re
import shlex
from html import escape as html_escape
from pathlib import Path

import pytest
from safetensors.torch import load_file

from coto_tools.cli import main
from coto_tools.errors import OptionError
from coto_tools.reproduce import ReproduceConfig, TaskSpec, build_report, reproduce
from coto_tools.reproduce.claims import FAILS, HOLDS, INCONCLUSIVE, UNDECIDABLE

SECTIONS = (
    "Verdicts",
    "Overview",
    "Claims",
    "1. Generalisation",
    "2. Merging seeds of the same task",
    "2b. Cross-task merging",
    "3. Pruning robustness",
    "4. Shapley contributions",
    "5. Linear mode connectivity",
    "6. Commands that rerun each piece",
)
CLAIMS = (
    "generalisation",
    "merging",
    "pruning robustness",
    "balanced Shapley contributions",
    "less redundant layers",
    "connectivity",
)


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``coto-tools reproduce --task tiny --quick --out DIR`` through the CLI, once."""
    out = tmp_path_factory.mktemp("repro") / "tiny-quick"
    main(["reproduce", "--task", "tiny", "--quick", "--quiet", "--out", str(out)])
    return out


def test_quick_writes_every_section_and_claim(quick_dir: Path) -> None:
    html = (quick_dir / "report.html").read_text()
    md = (quick_dir / "report.md").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}" in html, title
        assert f"## {title}" in md, title
    # self-contained: every image is inline base64 PNG, nothing is fetched
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) >= 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html
    claims = json.loads((quick_dir / "claims.json").read_text())
    got = claims["runs"][0]["claims"]
    assert [c["claim"] for c in got] == list(CLAIMS)
    for c in got:
        assert c["verdict"] in (HOLDS, FAILS, INCONCLUSIVE, UNDECIDABLE), c
        prim = [r for r in c["rows"] if r["primary"]]
        assert len(prim) == 1 and prim[0]["verdict"] == c["verdict"]
        # each claim names its test, its paired primary measure and what it could detect
        assert c["method"].startswith("paired t test")
        assert c["primary_measure"] == prim[0]["measure"]
        assert (c["smallest_detectable"] is None) == (c["verdict"] == UNDECIDABLE)
    # 2 seeds: one disjoint pair, so merging and connectivity are undecidable, said at the top
    by = {c["claim"]: c for c in got}
    assert by["merging"]["verdict"] == by["connectivity"]["verdict"] == UNDECIDABLE
    assert by["merging"]["seeds_needed"]["to_decide"] == 4
    top = md.split("## Overview")[0]
    assert "Undecidable at 2 seed(s)" in top and "--seeds 4" in top
    pruning = next(r for r in by["pruning robustness"]["rows"] if r["primary"])
    assert pruning["measure"].startswith("everyother drop") and pruning["n_docs"] is not None
    assert "Verdict rule" in html and html_escape(claims["rule"]) in html
    # the pruning table has one column per configuration: "full" is every adapter on, so the
    # strategy "all" (the same configuration) is not repeated beside it
    prune_md = md.split("## 3. Pruning robustness")[1].split("\n## ")[0]
    header = next(line for line in prune_md.splitlines() if line.startswith("| run |"))
    assert header.startswith("| run | full | none | ") and "| all |" not in header, header
    # tiny has no label subsets: the cross-task part is skipped with its reason
    assert "Skipped: the tiny task has no label-subset variants" in md
    for command in ("coto-tools train ", "coto-tools merge ", "coto-tools prune ",
                    "coto-tools shapley ", "coto-tools lmc "):  # fmt: skip
        assert command in md, command


def test_quick_interactions_and_redundancy_claim(quick_dir: Path) -> None:
    """The Shapley stage's pairwise interactions reach the page (figure, table) and the claim
    'less redundant layers' is judged on the two seeds' paired redundancy."""
    claims = json.loads((quick_dir / "claims.json").read_text())["runs"][0]["claims"]
    got = next(c for c in claims if c["claim"] == "less redundant layers")
    prim = next(r for r in got["rows"] if r["primary"])
    assert prim["units"] == 2 and got["verdict"] in (HOLDS, FAILS, INCONCLUSIVE)
    shap = json.loads((quick_dir / "shapley" / "shapley_summary.json").read_text())
    red = {r["method"]: r["interactions"]["redundancy"] for r in shap["runs"] if r["seed"] == 0}
    assert prim["paired"][0] == pytest.approx(red["lora"] - red["coto"])
    assert all(r["interactions"]["exact"] for r in shap["runs"])
    assert (quick_dir / "shapley" / "shapley_interactions.png").stat().st_size > 0
    md = (quick_dir / "report.md").read_text()
    assert "Which layers stand in for each other" in md and "--interactions" in md


def test_quick_numbers_come_from_the_runs(quick_dir: Path) -> None:
    """The claims table's generalisation values are the training records' accuracies."""
    claims = json.loads((quick_dir / "claims.json").read_text())["runs"][0]["claims"]
    row = claims[0]["rows"][0]
    for method in ("lora", "coto"):
        recs = [
            json.loads(p.read_text())
            for p in (quick_dir / "train").glob(f"*-{method}-s*/coto.json")
        ]
        assert sorted(r["metrics"]["accuracy"] for r in recs) == sorted(row[method]["values"])
        assert all(r["eval_split"] == "quick" for r in recs)
    # LoRA and CoTo runs of a seed differ only in the method
    lora = json.loads((quick_dir / "train/tiny-lora-s0/coto.json").read_text())["config"]
    coto = json.loads((quick_dir / "train/tiny-coto-s0/coto.json").read_text())["config"]
    assert {k for k in lora if lora[k] != coto[k]} == {"method"}


def test_rerun_does_no_work(quick_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from coto_tools.runtime.evaluator import Evaluator
    from coto_tools.tasks.tiny import TinyTask
    from coto_tools.train import loop

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun must not train, build a model or evaluate")

    monkeypatch.setattr(loop, "train", boom)
    monkeypatch.setattr(Evaluator, "__init__", boom)
    monkeypatch.setattr(TinyTask, "build_model", boom)
    rebuilt = ("report.html", "report.md", "claims.json", "reproduce.json")
    files = [p for p in quick_dir.rglob("*") if p.is_file() and p.name not in rebuilt]
    before = {p: p.stat().st_mtime_ns for p in files}
    result = reproduce(ReproduceConfig(out=quick_dir, task="tiny", quick=True), progress=False)
    assert (result.trained, result.evaluations, result.stages_run) == (0, 0, 0)
    assert result.stages_skipped == 7
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # no stage output was rewritten


def test_unfinished_stage_is_redone_alone(quick_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import shutil

    from coto_tools.train import loop

    copy = tmp_path / "copy"
    shutil.copytree(quick_dir, copy)
    (copy / "lmc" / "done.json").unlink()  # as if killed before the stage finished
    old = json.loads((quick_dir / "lmc" / "lmc_summary.json").read_text())
    monkeypatch.setattr(loop, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    result = reproduce(ReproduceConfig(out=copy, task="tiny", quick=True), progress=False)
    assert (result.trained, result.stages_run, result.stages_skipped) == (0, 1, 6)
    assert result.evaluations > 0
    new = json.loads((copy / "lmc" / "lmc_summary.json").read_text())
    assert new["pairs"] == old["pairs"]  # same adapters, same numbers


def test_other_settings_in_the_same_dir_are_refused(quick_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(quick_dir / "train", copy / "train")
    shutil.copy(quick_dir / "reproduce.json", copy / "reproduce.json")  # a reproduction folder
    with pytest.raises(OptionError, match="trained with other settings.*steps"):
        reproduce(ReproduceConfig(out=copy, task="tiny", quick=True, steps=7), progress=False)


def test_train_command_reproduces_the_adapter(quick_dir: Path, tmp_path: Path) -> None:
    """The report's ``coto-tools train`` line retrains the same adapter, bit for bit."""
    md = (quick_dir / "report.md").read_text()
    line = next(
        x for x in md.splitlines() if x.startswith("coto-tools train ") and "tiny-coto-s1" in x
    )
    args = shlex.split(line)[1:]
    i = args.index("--out")
    args[i + 1] = str(tmp_path / "again")
    main([*args, "--quiet"])
    a = load_file(str(quick_dir / "train/tiny-coto-s1/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "again/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_report_command_rebuilds_from_dirs(quick_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "combined"
    main(["report", str(quick_dir), str(quick_dir), "--out", str(out)])
    html = (out / "report.html").read_text()
    assert html.count("<h2>Claims</h2>") == 2
    with pytest.raises(SystemExit) as exc:
        main(["report", str(quick_dir), str(quick_dir)])
    assert exc.value.code == 2
    assert "give --out" in capsys.readouterr().err
    with pytest.raises(OptionError, match="not a reproduction directory"):
        build_report(tmp_path)


def test_cross_task_path_and_single_seed(tmp_path: Path) -> None:
    """Cross-task merging on two tiny variants; one seed: no merges of seeds, LMC skipped, and
    every verdict inconclusive (no seed spread)."""
    cross = (TaskSpec("tiny", {"seed": 1}), TaskSpec("tiny", {"seed": 2}))
    cfg = ReproduceConfig(out=tmp_path / "x", task="tiny", quick=True, seeds=1, steps=20,
                          cross_tasks=cross)  # fmt: skip
    result = reproduce(cfg, progress=False)
    assert result.trained == 2 + 4
    summary = json.loads((tmp_path / "x/cross/cross.json").read_text())
    assert summary["tasks"] == ["tiny[seed=1]", "tiny[seed=2]"]
    got = {(r["method"], r["label"], r["eval_task"]) for r in summary["merges"]}
    assert got == {(m, mm, t) for m in ("lora", "coto") for mm in ("task-arithmetic", "ties")
                   for t in summary["tasks"]}  # fmt: skip
    ta = [r for r in summary["merges"] if r["label"] == "task-arithmetic"]
    assert all(r["space"] == "delta" and r["weights"] == [1.0, 1.0] for r in ta)
    assert json.loads((tmp_path / "x/lmc/lmc_summary.json").read_text())["skipped"]
    for c in result.claims:
        assert c["verdict"].startswith((UNDECIDABLE, "not measured")), c
    md = (tmp_path / "x/report.md").read_text()
    assert "2b. Cross-task merging" in md and "Skipped" not in md.split("2b.")[1].split("##")[0]


def test_config_checks() -> None:
    with pytest.raises(OptionError, match="seeds"):
        ReproduceConfig(out=Path("x"), seeds=0)
    with pytest.raises(OptionError, match="no preset for task 'nope'"):
        ReproduceConfig(out=Path("x"), task="nope")
    with pytest.raises(OptionError, match="two tasks"):
        ReproduceConfig(out=Path("x"), cross_tasks=(TaskSpec("bbc-a"),))
    p = ReproduceConfig(out=Path("x"), task="bbc-topic", quick=True).preset()
    assert (p.seeds, p.split, p.cross_tasks is None, p.steps) == (2, "quick", True, 80)
    assert ReproduceConfig(out=Path("x"), task="tiny").preset().cross_tasks is None


def test_merge_command_gives_the_reported_accuracy(
    quick_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report's ``coto-tools merge ... --eval`` line rebuilds a merge and its accuracy."""
    md = (quick_dir / "report.md").read_text()
    name = "lora-1to1-s0-1-peft-linear"
    line = next(x for x in md.splitlines() if x.startswith("coto-tools merge ") and name in x)
    args = shlex.split(line)[1:]
    args[args.index("--out") + 1] = str(tmp_path / "merged")
    capsys.readouterr()
    main(args)
    printed = capsys.readouterr().out
    got = re.search(r"eval merged: accuracy ([0-9.]+)", printed)
    assert got is not None, printed
    rows = json.loads((quick_dir / "merge/merge.json").read_text())["merges"]
    want = next(r for r in rows if r["name"] == name)["accuracy"]
    assert got.group(1) == f"{want:.4f}"


def test_a_dir_of_another_preset_is_refused(quick_dir: Path) -> None:
    with pytest.raises(OptionError, match=r"holds a reproduction of task tiny \(quick=True\)"):
        reproduce(ReproduceConfig(out=quick_dir, task="tiny", quick=False), progress=False)
