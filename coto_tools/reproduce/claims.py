"""The claims table: each claim of the CoTo paper (arXiv 2506.05713), a primary measurement
that matches its wording, and a verdict by one paired, calibrated rule (:data:`RULE`,
:mod:`coto_tools.reproduce.stats`).

Primary measurements (paired: the same seed's LoRA and CoTo runs, the same documents):

- generalisation: accuracy with all adapters on (CoTo - LoRA per seed);
- merging: the 1:1 plain parameter average of a disjoint pair of seeds, minus the mean accuracy
  of the two adapters that went in (the *merge gap*; CoTo's gap - LoRA's);
- pruning robustness: accuracy with every other layer's adapters kept (mean of the even and the
  odd half) minus accuracy with all adapters, per seed (the *drop*; CoTo's - LoRA's);
- balanced Shapley contributions: the coefficient of variation of per-layer Shapley values
  (LoRA's - CoTo's: lower is more balanced);
- less redundant layers: the share of the full gain taken back by the pairwise Faith-Shap
  interactions of the layers, ``-sum_{i<j} e_ij / (v(all) - v(none))`` (LoRA's - CoTo's);
- connectivity: the accuracy barrier on the factor-space path between a disjoint pair of seeds
  (LoRA's - CoTo's).

Absolute accuracies stay in the tables as context rows (not judged for the claim).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coto_tools.reproduce import stats
from coto_tools.reproduce.stats import FAILS, HOLDS, INCONCLUSIVE, METHOD, UNDECIDABLE

__all__ = [
    "FAILS",
    "HOLDS",
    "INCONCLUSIVE",
    "MERGE_PRIMARY",
    "MERGE_VARIANTS",
    "RULE",
    "UNDECIDABLE",
    "Row",
    "build_claims",
    "undecidable_claims",
]

RULE = (
    "Each claim is judged on one primary measurement (marked *) that matches its wording; "
    "the other rows are context. The unit of replication is the training seed: LoRA and CoTo "
    "runs of one seed share the adapter initialisation and the data order, and all are "
    "evaluated on the same documents, so each unit gives a paired difference x (signed so "
    "that x > 0 means CoTo is better). Merges and barriers use disjoint groups of seeds "
    "((0,1), (2,3), ...), so no two units share a seed. d = mean of x over units; "
    "SE^2 = var(x)/k + var(D)/N, where D is the paired per-document difference averaged over "
    "units (for accuracy measures whose per-document results were kept; this is the paired "
    "document floor: the shared documents' common noise cancels). Test: "
    + METHOD
    + ". Verdict: holds if d/SE > t, does not hold if d/SE < -t, inconclusive otherwise; "
    "undecidable when fewer than 2 units exist (the page says how many seeds it would take). "
    "'smallest detectable' is the true difference this run would call 'holds' with 80% "
    "probability: an inconclusive result means any true difference is probably smaller. "
    "The many context rows are not corrected for multiple comparisons; only the primary "
    "row decides a claim. Training length and presets were chosen by a rule that does not "
    "look at which method wins; nothing was tuned to make a claim hold."
)

MERGE_VARIANTS: dict[str, str] = {
    "param-average": "plain parameter average: A and B each averaged (the LMC factor midpoint)",
    "peft-linear": "PEFT linear combination in factor space (A, B scaled by sqrt(w); 1:1 of an "
    "adapter with itself gives 2 dW, cross terms B_i A_j included)",
    "delta-average": "exact delta average: dW = sum w_i dW_i (concatenated factors)",
}
MERGE_PRIMARY = "param-average"
MERGE_WHY = (
    "The paper's merging experiments say 'linear fusion' without defining it; the CoTo "
    "repository credits LoraRetriever, whose fusion averages the LoRA parameters (A and B each "
    "averaged), so the verdict uses the plain parameter average. This is a lead from the "
    "authors' public material, not a statement of theirs; the other two variants are shown "
    "beside it."
)


# -- one measurement ------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One measurement: a value per unit and method, and how to judge them.

    ``lora`` / ``coto``: values per unit (same order as ``units``; ``None`` where missing);
    ``doc_diffs``: paired per-document differences averaged over units (signed: > 0 = CoTo
    better) or ``None``; ``seeds_per_unit``: 1 for seeds, 2 for pairs, 3 for triples."""

    measure: str
    lora: tuple[float | None, ...]
    coto: tuple[float | None, ...]
    higher_is_better: bool = True
    primary: bool = False
    unit: str = ""
    units: tuple[str, ...] = ()
    doc_diffs: np.ndarray | None = field(default=None, compare=False)
    seeds_per_unit: int = 1
    note: str = ""

    def judge(self) -> dict[str, Any]:
        """Means and sds per method, the paired test, its verdict, the smallest detectable
        difference and the seeds needed (see :mod:`coto_tools.reproduce.stats`)."""
        units = self.units or tuple(f"u{i}" for i in range(max(len(self.lora), len(self.coto))))
        pairs = [
            (u, lo, co)
            for u, lo, co in zip(units, self.lora, self.coto, strict=False)
            if _ok(lo) and _ok(co)
        ]
        sign = 1.0 if self.higher_is_better else -1.0
        x = [sign * (_num(co) - _num(lo)) for _, lo, co in pairs]
        test = stats.paired_test(x, doc_diffs=self.doc_diffs)
        out: dict[str, Any] = {
            "measure": self.measure,
            "primary": self.primary,
            "higher_is_better": self.higher_is_better,
            "unit": self.unit,
            "note": self.note,
            "lora": _side(self.lora),
            "coto": _side(self.coto),
            "unit_labels": [u for u, _, _ in pairs],
            "paired": x,
            "seeds_per_unit": self.seeds_per_unit,
            **test.as_dict(),
            "se_d": test.se,
        }
        need_min = stats.min_seeds(self.seeds_per_unit)
        need_obs = stats.seeds_needed(
            test.d,
            unit_sd=test.unit_sd,
            se_doc=test.se_doc,
            seeds_per_unit=self.seeds_per_unit,
        )
        out["seeds_needed"] = {"to_decide": need_min, "to_detect_observed": need_obs}
        out["why"] = _why(test, need_min)
        return out


def _ok(x: float | None) -> bool:
    return x is not None and math.isfinite(float(x))


def _num(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _side(vals: Sequence[float | None]) -> dict[str, Any]:
    v = np.asarray([_num(x) for x in vals if _ok(x)], dtype=np.float64)
    k = int(v.size)
    return {
        "mean": float(v.mean()) if k else None,
        "sd": float(v.std(ddof=1)) if k > 1 else None,
        "k": k,
        "values": [float(a) for a in v],
    }


def _why(t: stats.Paired, need_min: int) -> str:
    if t.verdict == UNDECIDABLE:
        return f"{t.units} unit(s): no spread to judge; needs at least {need_min} seeds"
    if t.se == 0.0:
        return "no spread at all (every unit and document identical)"
    return (
        f"d = {t.d:+.4g}, SE = {t.se:.3g}, t = {(t.d or 0.0) / (t.se or 1.0):+.2f} vs "
        f"±{t.t_crit:.2f} (df {t.df:.1f}), p = {t.p_value:.3g}; smallest detectable "
        f"{t.mde:.3g}"
    )


# -- per-document results -------------------------------------------------------------------
def bits(s: str | None) -> np.ndarray | None:
    """A run's per-document correctness, stored as a string of 0/1, as a float array."""
    if not s:
        return None
    return np.frombuffer(s.encode("ascii"), dtype=np.uint8).astype(np.float64) - 48.0


def doc_mean(parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Mean over units of per-document paired differences (``None`` if any is missing or the
    lengths disagree)."""
    if not parts or any(p is None for p in parts):
        return None
    arrs = [np.asarray(p, dtype=np.float64) for p in parts]
    if len({a.size for a in arrs}) != 1:
        return None
    return np.mean(arrs, axis=0)


Docs = dict[str, dict[str, np.ndarray]]  # run name -> configuration -> correctness per document


def prune_docs(prune: Mapping[str, Any] | None) -> Docs:
    """Per-document correctness of each main run (``full``, ``empty`` and each strategy), from
    the pruning summary (empty when it kept none)."""
    out: Docs = {}
    for r in (prune or {}).get("runs", []):
        got = {k: b for k, v in (r.get("docs") or {}).items() if (b := bits(v)) is not None}
        if got:
            out[r["run"]] = got
    return out


# -- the claims -----------------------------------------------------------------------------
Claim = dict[str, Any]


def _by(rows: Sequence[Mapping[str, Any]], method: str, **match: Any) -> list[Mapping[str, Any]]:
    return [
        r for r in rows if r["method"] == method and all(r.get(k) == v for k, v in match.items())
    ]


def _claim(key: str, statement: str, rows: Sequence[Row], skipped: str = "") -> Claim:
    judged = [r.judge() for r in rows]
    prim = next((j for j in judged if j["primary"]), None)
    if prim is None:
        verdict = f"not measured ({skipped})" if skipped else INCONCLUSIVE
    else:
        verdict = prim["verdict"]
    return {
        "claim": key,
        "statement": statement,
        "verdict": verdict,
        "method": METHOD,
        "primary_measure": None if prim is None else prim["measure"],
        "d": None if prim is None else prim["d"],
        "smallest_detectable": None if prim is None else prim["mde"],
        "units": 0 if prim is None else prim["units"],
        "decidable": prim is not None and prim["verdict"] != UNDECIDABLE,
        "seeds_needed": None if prim is None else prim["seeds_needed"],
        "rows": judged,
    }


def _seed_rows(
    runs: Sequence[Mapping[str, Any]], value: Any, seed_key: str = "seed"
) -> tuple[tuple[str, ...], dict[str, list[Any]], list[tuple[Any, Any]]]:
    """Units = seeds present for both methods: labels, per-method values, and the (LoRA row,
    CoTo row) of each unit."""
    by = {m: {int(r[seed_key]): r for r in _by(runs, m)} for m in ("lora", "coto")}
    seeds = sorted(set(by["lora"]) & set(by["coto"]))
    vals = {m: [value(by[m][s]) for s in seeds] for m in by}
    return tuple(f"s{s}" for s in seeds), vals, [(by["lora"][s], by["coto"][s]) for s in seeds]


def generalisation(single: Mapping[str, Any], prune: Mapping[str, Any] | None = None) -> Claim:
    docs = prune_docs(prune)
    units, acc, pairs = _seed_rows(single["runs"], lambda r: float(r["accuracy"]))
    _, lp, _ = _seed_rows(single["runs"], lambda r: float(r["logprob"]))
    dd = doc_mean([_diff(docs, lo["name"], co["name"], "full") for lo, co in pairs])
    return _claim(
        "generalisation",
        "CoTo adapters are more accurate on the task than LoRA adapters trained alike.",
        [
            Row(
                f"accuracy, all adapters on ({single['split']})",
                tuple(acc["lora"]),
                tuple(acc["coto"]),
                primary=True,
                unit="acc",
                units=units,
                doc_diffs=dd,
            ),
            Row(
                "mean log p(true label)",
                tuple(lp["lora"]),
                tuple(lp["coto"]),
                unit="nats",
                units=units,
            ),
        ],
    )


def _get(docs: Docs, run: str, config: str) -> np.ndarray | None:
    return docs.get(run, {}).get(config)


def _diff(docs: Docs, lora_run: str, coto_run: str, config: str) -> np.ndarray | None:
    """CoTo's per-document correctness minus LoRA's (``None`` if either is missing)."""
    lo, co = _get(docs, lora_run, config), _get(docs, coto_run, config)
    return None if lo is None or co is None or lo.size != co.size else co - lo


def _minus_mean(a: np.ndarray | None, parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """``a`` minus the mean of ``parts`` per document (``None`` if anything is missing)."""
    mean = doc_mean(parts)
    return None if a is None or mean is None or a.size != mean.size else a - mean


def merge_variant(row: Mapping[str, Any]) -> str:
    """The merge variant of a merge row (rows written before variants were labelled: by space)."""
    if row.get("variant"):
        return str(row["variant"])
    return "peft-linear" if row.get("space") == "factor" else "delta-average"


def merge_units(
    merge: Mapping[str, Any], variant: str, ratio: str, docs: Docs
) -> tuple[tuple[str, ...], dict[str, list[float | None]], dict[str, list[float | None]], Any]:
    """Per disjoint seed group: each method's merge gap (merged accuracy - mean accuracy of its
    inputs), its merged accuracy, and the per-document paired gap difference averaged over
    groups (``None`` without per-document results)."""
    size = len(ratio.split(":"))
    acc = {
        (r["method"], int((r.get("seeds") or [r.get("seed")])[0])): float(r["accuracy"])
        for r in merge.get("singles", [])
    }
    names = {
        (r["method"], int((r.get("seeds") or [r.get("seed")])[0])): r["name"]
        for r in merge.get("singles", [])
    }
    rows = [
        r for r in merge.get("merges", []) if r["label"] == ratio and merge_variant(r) == variant
    ]
    have = {(r["method"], tuple(int(s) for s in r["seeds"])): r for r in rows}
    seeds = sorted({s for m, s in acc})
    groups = [
        g
        for g in stats.disjoint_groups(seeds, size)
        if all((m, g) in have for m in ("lora", "coto"))
    ]
    gap: dict[str, list[float | None]] = {"lora": [], "coto": []}
    merged: dict[str, list[float | None]] = {"lora": [], "coto": []}
    doc_parts: list[np.ndarray | None] = []
    for g in groups:
        per_method_docs = {}
        for m in ("lora", "coto"):
            r = have[(m, g)]
            inputs = [acc[(m, s)] for s in g if (m, s) in acc]
            ok = len(inputs) == len(g)
            gap[m].append(float(r["accuracy"]) - float(np.mean(inputs)) if ok else None)
            merged[m].append(float(r["accuracy"]))
            md = bits(r.get("docs"))
            ins = [_get(docs, names.get((m, s), ""), "full") for s in g]
            per_method_docs[m] = _minus_mean(md, ins)
        lo, co = per_method_docs["lora"], per_method_docs["coto"]
        doc_parts.append(None if lo is None or co is None or lo.size != co.size else co - lo)
    units = tuple("+".join(f"s{s}" for s in g) for g in groups)
    return units, gap, merged, doc_mean(doc_parts)


def merging(
    merge: Mapping[str, Any],
    cross: Mapping[str, Any] | None,
    prune: Mapping[str, Any] | None = None,
) -> Claim:
    docs = prune_docs(prune)
    rows: list[Row] = []
    merges = merge.get("merges", [])
    present = {(merge_variant(r), r["label"]) for r in merges}
    present.add((MERGE_PRIMARY, "1:1"))  # the primary row even without merges: undecidable
    for variant in MERGE_VARIANTS:
        for ratio in ("1:1", "1:2", "1:1:1"):
            if (variant, ratio) not in present:
                continue
            units, gap, merged, dd = merge_units(merge, variant, ratio, docs)
            size = len(ratio.split(":"))
            primary = (variant, ratio) == (MERGE_PRIMARY, "1:1")
            rows.append(
                Row(
                    f"{ratio} merge gap: merged - mean of inputs ({variant})",
                    tuple(gap["lora"]),
                    tuple(gap["coto"]),
                    primary=primary,
                    unit="acc",
                    units=units,
                    doc_diffs=dd,
                    seeds_per_unit=size,
                    note=MERGE_VARIANTS[variant],
                )
            )
            if primary:
                rows.append(
                    Row(
                        f"{ratio} merged accuracy ({variant}; context)",
                        tuple(merged["lora"]),
                        tuple(merged["coto"]),
                        unit="acc",
                        units=units,
                        seeds_per_unit=size,
                    )
                )
    if cross and "merges" in cross:
        rows += _cross_rows(cross)
    return _claim(
        "merging", "Merged CoTo adapters keep more accuracy than merged LoRA adapters.", rows
    )


def _cross_rows(cross: Mapping[str, Any]) -> list[Row]:
    """Per cross-task merge method: per seed, the mean over the two tasks of (merged accuracy on
    the task - that task's own adapter's accuracy)."""
    tasks = list(cross["tasks"])
    out = []
    for label in sorted({r["label"] for r in cross["merges"]}):
        vals: dict[str, dict[int, float]] = {}
        for m in ("lora", "coto"):
            per_seed: dict[int, dict[str, Mapping[str, Any]]] = {}
            for r in _by(cross["merges"], m, label=label):
                per_seed.setdefault(int(r["seeds"][0]), {})[r["eval_task"]] = r
            vals[m] = {
                s: float(
                    np.mean([d[t]["accuracy"] - (d[t].get("own_accuracy") or 0.0) for t in tasks])
                )
                for s, d in per_seed.items()
                if all(t in d and d[t].get("own_accuracy") is not None for t in tasks)
            }
        seeds = sorted(set(vals["lora"]) & set(vals["coto"]))
        out.append(
            Row(
                f"cross-task {label} merge: accuracy - own adapter's, mean over "
                f"{' and '.join(tasks)}",
                tuple(vals["lora"][s] for s in seeds),
                tuple(vals["coto"][s] for s in seeds),
                unit="acc",
                units=tuple(f"s{s}" for s in seeds),
            )
        )
    return out


EVERYOTHER = ("everyother-even", "everyother-odd")


def pruning(prune: Mapping[str, Any]) -> Claim:
    runs = prune["runs"]
    docs = prune_docs(prune)
    strategies = [k for k in (runs[0]["strategies"] if runs else {}) if k != "all"]
    rows = []

    def drop(keys: Sequence[str]) -> Any:
        def f(r: Mapping[str, Any]) -> float | None:
            st = r["strategies"]
            got = [st[k]["accuracy"] for k in keys if k in st]
            if not got:
                return None
            return float(np.mean(got)) - float(r["full"]["accuracy"])

        return f

    def doc_drop(run: str, keys: Sequence[str]) -> np.ndarray | None:
        full = _get(docs, run, "full")
        mean = doc_mean([_get(docs, run, k) for k in keys])
        return None if full is None or mean is None or mean.size != full.size else mean - full

    for measure, keys, primary in (
        ("everyother drop: accuracy(pruned) - accuracy(all), mean of even and odd", EVERYOTHER,
         True),
        *(
            [(f"mean drop over the {len(strategies)} pruning strategies", tuple(strategies), False)]
            if set(strategies) - set(EVERYOTHER)
            else []
        ),
        *[(f"{k} drop", (k,), False) for k in strategies if k not in EVERYOTHER],
    ):  # fmt: skip
        units, vals, pairs = _seed_rows(runs, drop(keys))
        parts = []
        for lo, co in pairs:
            a, b = doc_drop(lo["run"], keys), doc_drop(co["run"], keys)
            parts.append(None if a is None or b is None else b - a)
        rows.append(
            Row(
                measure,
                tuple(vals["lora"]),
                tuple(vals["coto"]),
                primary=primary,
                unit="acc",
                units=units,
                doc_diffs=doc_mean(parts),
            )
        )
        if primary:
            units, vals, _ = _seed_rows(
                runs,
                lambda r: (
                    float(np.mean([r["strategies"][k]["accuracy"] for k in EVERYOTHER]))
                    if all(k in r["strategies"] for k in EVERYOTHER)
                    else None
                ),
            )
            rows.append(
                Row(
                    "everyother accuracy (context)",
                    tuple(vals["lora"]),
                    tuple(vals["coto"]),
                    unit="acc",
                    units=units,
                )
            )
    return _claim(
        "pruning robustness",
        "CoTo adapters lose less accuracy than LoRA adapters when whole adapters are pruned.",
        rows,
    )


def shapley_balance(shapley: Mapping[str, Any]) -> Claim:
    runs = shapley["runs"]
    rows = []
    for measure, fld, primary in (
        (
            "coefficient of variation of per-layer Shapley contributions (lower = more balanced)",
            "layer_cv",
            True,
        ),
        ("Gini of |Shapley values| (lower = more balanced)", "gini_abs", False),
    ):
        units, vals, _ = _seed_rows(runs, lambda r, f=fld: r["balance"].get(f))
        rows.append(
            Row(
                measure,
                tuple(vals["lora"]),
                tuple(vals["coto"]),
                higher_is_better=False,
                primary=primary,
                units=units,
            )
        )
    return _claim(
        "balanced Shapley contributions",
        "CoTo spreads the adapters' contributions more evenly over layers than LoRA.",
        rows,
    )


REDUNDANCY_PRIMARY = (
    "redundancy of the layers: -(sum of pairwise Faith-Shap interactions) / (v(all) - v(none))"
)
REDUNDANCY_TEXT = (
    "CoTo's layers stand in for each other less than LoRA's: their pairwise Shapley interactions "
    "take back a smaller share of the full gain."
)


def less_redundant(shapley: Mapping[str, Any]) -> Claim:
    """Primary: the redundancy of each run's players (from the order-2 Faith-Shap indices of the
    Shapley stage; lower = less redundant), LoRA's - CoTo's per seed. Context: the largest
    single overlap (the most negative pairwise index)."""
    runs = shapley["runs"]
    if not any(r.get("interactions") for r in runs):  # a Shapley stage from before interactions
        return {
            "claim": "less redundant layers",
            "statement": REDUNDANCY_TEXT,
            "rows": [],
            "method": METHOD,
            "decidable": False,
            "verdict": "not measured (the Shapley stage has no interactions: rerun it)",
        }

    def inter(r: Mapping[str, Any]) -> Mapping[str, Any]:
        return r.get("interactions") or {}

    def most_negative(r: Mapping[str, Any]) -> float | None:
        vals = [p["value"] for p in inter(r).get("pairs", []) if p.get("value") is not None]
        return min(vals) if vals else None

    units, red, _ = _seed_rows(runs, lambda r: inter(r).get("redundancy"))
    _, neg, _ = _seed_rows(runs, most_negative)
    rows = [
        Row(REDUNDANCY_PRIMARY, tuple(red["lora"]), tuple(red["coto"]),
            higher_is_better=False, primary=True, units=units),
        Row("most negative pairwise interaction (the largest overlap of two layers)",
            tuple(neg["lora"]), tuple(neg["coto"]), higher_is_better=True, units=units),
    ]  # fmt: skip
    return _claim("less redundant layers", REDUNDANCY_TEXT, rows)


def connectivity(lmc: Mapping[str, Any]) -> Claim:
    if "pairs" not in lmc:  # no pair of seeds: undecidable, with the seeds it needs
        skipped = str(lmc.get("skipped", ""))
        row = Row(_LMC_PRIMARY, (), (), False, True, "accuracy", (), None, 2, skipped)
        return _claim("connectivity", _LMC_TEXT, [row])
    pairs = lmc["pairs"]
    seeds = sorted({int(s) for p in pairs for s in p["seeds"]})
    groups = stats.disjoint_groups(seeds, 2)
    rows = []
    for space in ("factor", "delta"):
        for metric, primary in (("accuracy", space == "factor"), ("loss", False)):
            vals: dict[str, dict[tuple[int, ...], float | None]] = {}
            for m in ("lora", "coto"):
                vals[m] = {
                    tuple(int(s) for s in p["seeds"]): p["barriers"][space][metric]["barrier"]
                    for p in pairs
                    if p["method"] == m and space in p["barriers"]
                }
            use = [g for g in groups if g in vals["lora"] and g in vals["coto"]]
            rows.append(
                Row(
                    _LMC_PRIMARY if primary else f"{metric} barrier between seeds ({space} space)",
                    tuple(vals["lora"][g] for g in use),
                    tuple(vals["coto"][g] for g in use),
                    higher_is_better=False,
                    primary=primary,
                    unit=metric,
                    units=tuple(f"s{a}+s{b}" for a, b in use),
                    seeds_per_unit=2,
                )
            )
    return _claim("connectivity", _LMC_TEXT, rows)


_LMC_PRIMARY = "accuracy barrier between seeds (factor space)"
_LMC_TEXT = (
    "CoTo adapters of different seeds are linearly connected: a smaller barrier on the straight "
    "path between them than between LoRA adapters."
)


def build_claims(summaries: Mapping[str, Mapping[str, Any] | None]) -> list[Claim]:
    """All claims from the stage summaries (a missing stage gives a 'not measured' claim)."""
    out = []
    makers = (
        ("generalisation", lambda s: generalisation(s["single"], s.get("prune")), ("single",)),
        ("merging", lambda s: merging(s["merge"], s.get("cross"), s.get("prune")), ("merge",)),
        ("pruning robustness", lambda s: pruning(s["prune"]), ("prune",)),
        ("balanced Shapley contributions", lambda s: shapley_balance(s["shapley"]), ("shapley",)),
        ("less redundant layers", lambda s: less_redundant(s["shapley"]), ("shapley",)),
        ("connectivity", lambda s: connectivity(s["lmc"]), ("lmc",)),
    )
    for name, make, needs in makers:
        missing = [n for n in needs if not summaries.get(n)]
        if missing:
            out.append(
                {
                    "claim": name,
                    "statement": "",
                    "rows": [],
                    "method": METHOD,
                    "decidable": False,
                    "verdict": f"not measured (stage {missing[0]} not finished)",
                }
            )
        else:
            out.append(make(summaries))
    return out


def undecidable_claims(claims: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per claim that cannot be decided at this run's seeds."""
    out = []
    for c in claims:
        if c.get("verdict") != UNDECIDABLE:
            continue
        need = (c.get("seeds_needed") or {}).get("to_decide")
        out.append(
            f"{c['claim']}: undecidable at these seeds ({c.get('units', 0)} independent "
            f"unit(s) of '{c.get('primary_measure')}'); it needs at least {need} seeds "
            f"(--seeds {need})."
        )
    return out
