"""``report.html`` (self-contained: figures as base64 PNG), ``report.md`` and ``claims.json``
of one or more reproduction directories, built from the stages' outputs alone."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coto_tools.adapters.atomic import atomic_write_text
from coto_tools.adapters.outguard import check_output
from coto_tools.errors import OptionError
from coto_tools.jsonio import JsonFileError
from coto_tools.reproduce import commands as cmd
from coto_tools.reproduce.claims import (
    EVERYOTHER,
    MERGE_PRIMARY,
    MERGE_VARIANTS,
    MERGE_WHY,
    RULE,
    build_claims,
    merge_variant,
)
from coto_tools.reproduce.stage import DONE_FILE, read_json

STAGES = ("train", "single", "merge", "cross", "prune", "shapley", "lmc")
META_FILE = "reproduce.json"


def load_dir(root: Path) -> dict[str, Any]:
    """Everything the report needs from one reproduction directory."""
    root = Path(root)
    if not (root / META_FILE).is_file():
        raise OptionError(f"{root}: not a reproduction directory (no {META_FILE})")
    data: dict[str, Any] = {
        "root": root,
        "meta": read_json(root / META_FILE, required={"task": str}, optional=_META_SHAPE),
        "done": {},
        "summaries": {},
    }
    for st in STAGES:
        f = root / st / DONE_FILE
        if not f.is_file():
            continue
        done = read_json(
            f,
            optional={"summary": str, "wall_time_s": float, "cpu_time_s": float, "finished": str},
        )
        data["done"][st] = done
        if done.get("summary"):
            if Path(done["summary"]).name != done["summary"]:
                raise JsonFileError(f"{f}: 'summary' must be a file name in {root / st}")
            data["summaries"][st] = read_json(root / st / done["summary"])
    with _shape_errors(root):
        data["claims"] = build_claims(data["summaries"])
    return data


_META_SHAPE = {"preset": dict, "invocations": list, "out": str, "command": str}


@contextmanager
def _shape_errors(root: Path) -> Iterator[None]:
    """A stage summary or record of ``root`` whose content is not what the report reads (a
    list where an object belongs, a missing field, ...) becomes one error line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        raise JsonFileError(
            f"{root}: a record or stage summary does not have the expected content "
            f"({type(exc).__name__}: {exc}); rerun coto-tools reproduce --out {root}"
        ) from exc


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ms(side: Mapping[str, Any]) -> str:
    if side["mean"] is None:
        return "n/a"
    sd = "" if side["sd"] is None else f" ± {side['sd']:.3f}"
    return f"{side['mean']:.3f}{sd} (k={side['k']})"


CLAIMS_HEAD = [
    "claim",
    "measure (* = primary)",
    "LoRA mean ± sd",
    "CoTo mean ± sd",
    "paired d ± SE (CoTo better > 0)",
    "units",
    "smallest detectable (80% power)",
    "p",
    "verdict",
]


def claims_rows(claims: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One row per measurement of every claim (:data:`CLAIMS_HEAD`)."""
    out = []
    for c in claims:
        if not c["rows"]:
            out.append([c["claim"], "-", "-", "-", "-", "-", "-", "-", c["verdict"]])
        for r in c["rows"]:
            d = "n/a" if r["d"] is None else f"{r['d']:+.4f}"
            se = "" if r.get("se") is None else f" ± {r['se']:.4f}"
            name = ("* " if r["primary"] else "") + r["measure"]
            units = ", ".join(r.get("unit_labels") or []) or str(r.get("units", ""))
            out.append(
                [
                    c["claim"],
                    name,
                    _ms(r["lora"]),
                    _ms(r["coto"]),
                    d + se,
                    units,
                    _f(r.get("mde"), 4),
                    _f(r.get("p_value"), 3),
                    r["verdict"],
                ]
            )
    return out


def training_section(
    curves: Mapping[str, Any], figure: Path
) -> tuple[str, list[str], list[list[list[str]]], list[Path]]:
    """Training length: each run's learning curve and whether the plateau rule says its
    training loss stopped falling (LoRA and CoTo judged alike)."""
    rows = [
        ["run", "method", "seed", "steps", "loss before", "loss last", "fall", "tol", "plateaued"]
    ]
    runs = curves["runs"]
    for name, r in runs.items():
        t = r.get("plateau") or {}
        rows.append(
            [
                name,
                r["method"],
                str(r["seed"]),
                str(len(r["losses"])),
                _f(t.get("prev"), 4),
                _f(t.get("last"), 4),
                _f(t.get("fall"), 4),
                _f(t.get("tol"), 4),
                {True: "yes", False: "NO", None: "n/a"}[t.get("plateaued")],
            ]
        )
    short = [n for n, r in runs.items() if (r.get("plateau") or {}).get("plateaued") is False]
    paras = [f"Plateau rule: {curves.get('rule', '')}."]
    paras.append(
        "Every run plateaued."
        if not short
        else f"Still falling at the end: {', '.join(short)}; those runs may be undertrained "
        "(train longer with --steps)."
    )
    return "Training length (learning curves)", paras, [rows], [figure]


def verdict_section(d: Mapping[str, Any]) -> tuple[str, list[str], list[list[list[str]]]]:
    """The page's first section: each claim's verdict on its primary measure, the smallest
    difference this run could detect, and the claims undecidable at these seeds (with the
    seeds they would need)."""
    from coto_tools.reproduce.claims import undecidable_claims

    claims = d["claims"]
    seeds = (d["meta"].get("preset") or {}).get("seeds")
    paras = []
    undecided = undecidable_claims(claims)
    if undecided:
        paras.append(f"Undecidable at {seeds} seed(s) per method: " + " ".join(undecided))
    paras.append(
        "Each verdict is that of the claim's primary, paired measure; 'inconclusive' means any "
        "true difference is probably smaller than the smallest detectable one. Method: "
        + (claims[0].get("method", "") if claims else "")
        + "."
    )
    rows = [
        [
            "claim",
            "primary measure",
            "paired d",
            "smallest detectable",
            "units",
            "verdict",
            "seeds to decide / to detect the observed d",
        ]
    ]
    for c in claims:
        need = c.get("seeds_needed") or {}
        rows.append(
            [
                c["claim"],
                str(c.get("primary_measure") or "-"),
                "n/a" if c.get("d") is None else f"{c['d']:+.4f}",
                _f(c.get("smallest_detectable"), 4),
                str(c.get("units", 0)),
                c["verdict"],
                f"{_f(need.get('to_decide'))} / {_f(need.get('to_detect_observed'))}",
            ]
        )
    return "Verdicts", paras, [rows]


def _sections(
    d: Mapping[str, Any],
) -> list[tuple[str, list[str], list[list[list[str]]], list[Path]]]:
    """(title, paragraphs, tables, figures) per section, shared by HTML and Markdown."""
    root: Path = d["root"]
    meta, s, done = d["meta"], d["summaries"], d["done"]
    preset = meta.get("preset", {})
    secs: list[tuple[str, list[str], list[list[list[str]]], list[Path]]] = []
    # overview
    paras = [
        f"Task {meta['task']} ({preset.get('name', '?')} preset), {preset.get('seeds')} seed(s) "
        f"per method; training: {preset.get('steps')} steps, batch {preset.get('batch_size')}, "
        f"lr {preset.get('lr')}, rank {preset.get('rank')}, alpha {preset.get('alpha')}, task "
        f"options {preset.get('task_variant')}. Accuracies on the {preset.get('split')} split; "
        f"Shapley and LMC on the {preset.get('analysis_split')} split.",
        f"Machine: {meta.get('cpus')} CPU(s), {meta.get('torch_threads', '?')} torch thread(s); "
        "CPU time = user + system seconds of all the process's threads. Each "
        "invocation below reused what earlier ones finished (a rerun trains and evaluates "
        "nothing that is done).",
    ]
    times = [
        [
            st,
            _f(done[st].get("wall_time_s"), 1),
            _f(done[st].get("cpu_time_s"), 1),
            done[st].get("finished", ""),
        ]
        for st in STAGES
        if st in done
    ]
    inv = [
        [
            "started",
            "wall time (s)",
            "CPU time (s)",
            "load average at start",
            "at end",
            "trained",
            "stages run",
            "stages reused",
        ]
    ]
    for i in meta.get("invocations", []):
        inv.append(
            [
                i["started"],
                _f(i["wall_time_s"], 1),
                _f(i.get("cpu_time_s"), 1),
                str(i.get("loadavg_start")),
                str(i.get("loadavg_end")),
                str(i["trained"]),
                str(i["stages_run"]),
                str(i["stages_skipped"]),
            ]
        )
    stages = [["stage", "wall time (s)", "CPU time (s)", "finished"], *times]
    secs.insert(0, (*verdict_section(d), []))
    secs.append(("Overview", paras, [inv, stages], []))
    secs.append(
        ("Claims", ["Verdict rule: " + RULE], [[CLAIMS_HEAD, *claims_rows(d["claims"])]], [])
    )
    if "train" in s and "runs" in s["train"]:
        secs.append(training_section(s["train"], root / "train" / "learning_curves.png"))
    if "single" in s:
        sg = s["single"]
        rows = [["run", "method", "seed", "accuracy", "log p(true)", "loss", "n"]]
        rows += [
            [
                r["name"],
                r["method"],
                str(r["seed"]),
                _f(r["accuracy"]),
                _f(r["logprob"]),
                _f(r["loss"]),
                str(r["n"]),
            ]
            for r in sg["runs"]
        ]
        zs = sg.get("zero_shot") or {}
        secs.append(
            (
                "1. Generalisation (single-task accuracy)",
                [
                    f"Zero-shot (no adapter): accuracy {_f(zs.get('accuracy'))}, log p "
                    f"{_f(zs.get('logprob'))} on the {sg['split']} split."
                ],
                [rows],
                [root / "single" / "single.png"],
            )
        )
    if "merge" in s:
        mg = s["merge"]
        rows = [["merge", "method", "ratio", "seeds", "variant", "accuracy", "log p(true)"]]
        rows += [
            [
                r["name"],
                r["method"],
                r["label"],
                ",".join(map(str, r["seeds"])),
                merge_variant(r),
                _f(r["accuracy"]),
                _f(r["logprob"]),
            ]
            for r in mg["merges"]
        ]
        secs.append(
            (
                "2. Merging seeds of the same task",
                [
                    "Disjoint groups of seeds ((0,1), (2,3), ...; (0,1,2), ... for 1:1:1), so no "
                    "two merges share a seed. Variants: "
                    + "; ".join(f"{k}: {v}" for k, v in MERGE_VARIANTS.items())
                    + ". 0:1 = the single adapters.",
                    f"Primary variant: {MERGE_PRIMARY}. {MERGE_WHY}",
                ],
                [rows],
                [root / "merge" / "merge.png"],
            )
        )
    if "cross" in s:
        cr = s["cross"]
        if "skipped" in cr:
            secs.append(("2b. Cross-task merging", [f"Skipped: {cr['skipped']}."], [], []))
        else:
            rows = [
                [
                    "merge",
                    "method",
                    "seed",
                    "space",
                    "evaluated on",
                    "accuracy",
                    "own adapter's accuracy",
                ]
            ]
            rows += [
                [
                    r["name"],
                    r["method"],
                    str(r["seeds"][0]),
                    r["space"],
                    r["eval_task"],
                    _f(r["accuracy"]),
                    _f(r.get("own_accuracy")),
                ]
                for r in cr["merges"]
            ]
            secs.append(
                (
                    "2b. Cross-task merging",
                    [
                        f"Adapters of {cr['tasks'][0]} and {cr['tasks'][1]} merged by task "
                        "arithmetic (delta space, weights 1, 1) and TIES (factor space, "
                        "density 0.5, weights 1, 1), each merge evaluated on both tasks."
                    ],
                    [rows],
                    [root / "cross" / "cross.png"],
                )
            )
    if "prune" in s:
        runs = s["prune"]["runs"]
        strategies = list(runs[0]["strategies"]) if runs else []
        # "all" keeps every adapter: the same configuration as the "full" column
        names = [k for k in strategies if k != "all"]
        rows = [["run", "full", "none", *names]]
        rows += [
            [
                r["run"],
                _f(r["full"]["accuracy"]),
                _f(r["empty"]["accuracy"]),
                *[_f(r["strategies"][k]["accuracy"]) for k in names],
            ]
            for r in runs
        ]
        secs.append(
            (
                "3. Pruning robustness",
                [
                    "Accuracy with only the adapters each strategy keeps (whole adapters "
                    "removed, no retraining)."
                    + (
                        ""
                        if set(strategies) - {"all", *EVERYOTHER}
                        else " This preset runs only the claim's strategies (everyother even "
                        "and odd); --quick and coto-tools prune run the paper's eight."
                    )
                ],
                [rows],
                [root / "prune" / "prune_strategies.png"],
            )
        )
    if "shapley" in s:
        sh = s["shapley"]
        rows = [["run", "v(all) - v(none)", "layer CV", "Gini |phi|", "top-3 share", "evaluations"]]
        rows += [
            [
                r["run"],
                _f(r["v_full"] - r["v_empty"]),
                _f(r["balance"].get("layer_cv")),
                _f(r["balance"].get("gini_abs")),
                _f(r["balance"].get("top3_share")),
                str(r["evaluations"]),
            ]
            for r in sh["runs"]
        ]
        secs.append(
            (
                "4. Shapley contributions",
                [
                    f"{sh['estimator']} Shapley values of {sh['players']} players, value = "
                    f"{sh['metric']} on the {sh['split']} split. Heatmaps: one colour scale "
                    "across LoRA and CoTo.",
                    *interaction_paragraphs(sh["runs"]),
                ],
                [rows, shapley_se_table(sh["runs"]), *interaction_tables(sh["runs"])],
                [
                    root / "shapley" / "shapley_mean.png",
                    root / "shapley" / "shapley_heatmaps.png",
                    root / "shapley" / "shapley_interactions.png",
                ],
            )
        )
    if "lmc" in s:
        lm = s["lmc"]
        if "skipped" in lm:
            secs.append(("5. Linear mode connectivity", [f"Skipped: {lm['skipped']}."], [], []))
        else:
            rows = [["pair", "space", "accuracy barrier", "loss barrier", "accuracy at a=0.5"]]
            for p in lm["pairs"]:
                for sp, b in p["barriers"].items():
                    rows.append(
                        [
                            p["label"],
                            sp,
                            _f(b["accuracy"]["barrier"]),
                            _f(b["loss"]["barrier"]),
                            _f(b["accuracy"]["midpoint"]),
                        ]
                    )
            secs.append(
                (
                    "5. Linear mode connectivity",
                    [
                        f"{lm['points']} points per path on the {lm['split']} split; barrier "
                        "= largest drop below the straight line between the endpoints."
                    ],
                    [rows],
                    [root / "lmc" / "lmc_side_by_side.png"],
                )
            )
    secs.append(("6. Commands that rerun each piece", cmd.rerun_commands(d), [], []))
    return secs


def interaction_paragraphs(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the interaction heatmap shows (nothing for a stage without interactions)."""
    if not any(r.get("interactions") for r in runs):
        return []
    return [
        "Which layers stand in for each other: pairwise Faith-Shap interaction indices (order 2, "
        "as shapiq's FSII) from the same coalitions as the Shapley values, mean over seeds per "
        "method on one colour scale. Negative (blue) = the two layers are redundant, together "
        "they add less than apart; positive (red) = they need each other. Redundancy = "
        "-(sum of pairwise indices) / (v(all) - v(none)), the share of the full gain the "
        "overlaps take back; the claim 'less redundant layers' compares it per seed. A star "
        "marks a mean whose 95% t interval over the seeds excludes 0."
    ]


def interaction_tables(runs: Sequence[Mapping[str, Any]]) -> list[list[list[str]]]:
    """One row per run: redundancy, sum of pairwise indices, the most negative pair."""
    have = [r for r in runs if r.get("interactions")]
    if not have:
        return []
    rows = [["run", "redundancy", "sum of pairwise", "most negative pair", "exact"]]
    for r in have:
        it = r["interactions"]
        worst = min(it["pairs"], key=lambda p: p["value"]) if it["pairs"] else None
        rows.append(
            [
                str(r["run"]),
                _f(it.get("redundancy")),
                _f(it.get("pair_total")),
                "—" if worst is None else f"{worst['a']} x {worst['b']}: {_f(worst['value'])}",
                "yes" if it.get("exact") else "no",
            ]
        )
    return [rows]


def shapley_se_table(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per-run Shapley values with their standard errors (the numbers behind the per-run
    heatmaps), one row per player, one number format for the whole table."""
    from coto_tools.plotting import cell_format

    fmt = cell_format(v for r in runs for v in r["values"])
    players = list(dict.fromkeys(p for r in runs for p in r["players"]))
    rows = [["player (value ± standard error)", *(str(r["run"]) for r in runs)]]
    for p in players:
        cells = []
        for r in runs:
            if p not in r["players"]:
                cells.append("—")
                continue
            i = list(r["players"]).index(p)
            se = (r.get("std_errors") or [None] * len(r["players"]))[i]
            ses = "" if se is None or se != se else " ± " + fmt.format(se)  # None/NaN: none
            cells.append(fmt.format(r["values"][i]) + ses)
        rows.append([str(p), *cells])
    return rows


# -- rendering ----------------------------------------------------------------------------------
_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
    "table{border-collapse:collapse;margin:.6em 0;font-size:.85em}"
    "td,th{border:1px solid #bbb;padding:3px 7px;text-align:left}th{background:#eee}"
    "img{max-width:100%}pre{background:#f6f6f6;padding:.6em;font-size:.8em;"
    "white-space:pre-wrap;overflow-wrap:anywhere}"  # long rerun commands wrap
    ".holds{background:#d8f5d0}.does-not-hold{background:#f8d4d4}.inconclusive{background:#f4f0d0}"
    ".undecidable{background:#e4e4e4}"
)


def _verdict_class(v: str) -> str:
    known = ("holds", "does not hold", "inconclusive", "undecidable")
    return v.replace(" ", "-") if v in known else ""


def _html_table(rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = []
    for r in rows[1:]:
        cells = []
        for c in r:
            cls = _verdict_class(c)
            cells.append(
                f"<td class='{cls}'>{html.escape(c)}</td>" if cls else f"<td>{html.escape(c)}</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(path.name)}' src='data:image/png;base64,{data}'>"


def render_html(datas: Sequence[Mapping[str, Any]]) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>coto-tools reproduce"
        f"</title><style>{_CSS}</style></head><body>",
        "<h1>CoTo (arXiv 2506.05713) reproduced: LoRA vs CoTo</h1>",
    ]
    for d in datas:
        if len(datas) > 1:
            parts.append(f"<h1>{html.escape(str(d['root']))}</h1>")
        for title, paras, tables, figs in _sections(d):
            parts.append(f"<h2>{html.escape(title)}</h2>")
            if title.startswith("6."):
                parts.append("<pre>" + html.escape("\n".join(paras)) + "</pre>")
            else:
                parts += [f"<p>{html.escape(p)}</p>" for p in paras]
            parts += [_html_table(t) for t in tables]
            parts += [_png(f) for f in figs if f.is_file()]
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_table(rows: Sequence[Sequence[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(esc[0])]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def render_md(datas: Sequence[Mapping[str, Any]], base: Path) -> str:
    parts = ["# CoTo (arXiv 2506.05713) reproduced: LoRA vs CoTo", ""]
    for d in datas:
        if len(datas) > 1:
            parts += [f"# {d['root']}", ""]
        for title, paras, tables, figs in _sections(d):
            parts += [f"## {title}", ""]
            if title.startswith("6."):
                parts += ["```", *paras, "```", ""]
            else:
                parts += [p + "\n" for p in paras]
            parts += [_md_table(t) + "\n" for t in tables]
            parts += [f"![{f.name}]({_rel(f, base)})\n" for f in figs if f.is_file()]
    return "\n".join(parts)


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def claims_json(datas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "format": "coto-tools/claims",
        "version": 1,
        "rule": RULE,
        "runs": [
            {
                "dir": str(d["root"]),
                "task": d["meta"]["task"],
                "preset": d["meta"].get("preset"),
                "claims": d["claims"],
            }
            for d in datas
        ],
    }


def build_report(dirs: Sequence[str | Path] | str | Path, *, out: str | Path | None = None) -> Path:
    """Write ``report.html``, ``report.md`` and ``claims.json`` for reproduction directories
    ``dirs`` (one section each) into ``out`` (default: the only directory; required for
    several). Reads the stages' outputs only: evaluates and trains nothing. Returns the HTML
    path."""
    ds = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(p) for p in dirs]
    if not ds:
        raise OptionError("report: give at least one reproduction directory")
    if out is None and len(ds) > 1:
        raise OptionError("report: with several directories, give --out for the combined page")
    target = Path(out) if out is not None else ds[0]
    datas = [load_dir(p) for p in ds]
    read = [d["root"] / f for d in datas for f in (META_FILE, *(f"{s}/" for s in STAGES))]
    check_output(target, [], replaces=False)
    for name in ("claims.json", "report.md", "report.html"):
        page = target / name
        if not (page.is_file() and not page.is_symlink()):  # a page built before is rebuilt
            check_output(page, read, replaces=False, inside_ok=True)
    with _shape_errors(target if len(ds) > 1 else ds[0]):  # every page built before any write
        pages = (json.dumps(claims_json(datas), indent=2) + "\n", render_md(datas, target))
        page_html = render_html(datas)
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target / "claims.json", pages[0])
    atomic_write_text(target / "report.md", pages[1])
    return atomic_write_text(target / "report.html", page_html)
