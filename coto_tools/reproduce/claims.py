"""The claims table: each claim of the CoTo paper (arXiv 2506.05713), the numbers measured for
LoRA and CoTo, and a verdict by one fixed rule (:data:`RULE`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Z = 2.0
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"

RULE = (
    "For each measurement, each method has values x_1..x_k over seeds (over seed pairs or "
    "triples for merges and connectivity), with mean m and sample standard deviation s. The "
    "standard error of a method's mean is SE = sqrt(s^2/k + b^2), where b = sqrt(p(1-p)/N) is "
    "the binomial standard error of an accuracy p measured on N documents (for an average of "
    "two tasks' accuracies, the standard error of that average; for an accuracy barrier, p is "
    "the mean endpoint accuracy) and b = 0 for measures without a closed-form sampling error "
    "(log-probabilities, loss barriers, Shapley balance), which then rest on the seed spread "
    "alone. b is not divided by k because every seed is evaluated on the same documents. "
    "d = CoTo's mean minus LoRA's mean, signed so that d > 0 means CoTo is better (for "
    "lower-is-better measures, barriers and Shapley dispersion, d = LoRA's mean minus CoTo's). "
    "SE_d = sqrt(SE_LoRA^2 + SE_CoTo^2). Verdict: holds if d > 2 SE_d; does not hold if "
    "d < -2 SE_d; inconclusive otherwise, and always inconclusive when either method has fewer "
    "than 2 values (no seed spread). A claim's verdict is that of its primary measurement "
    "(marked *); the others are shown for context. Caveats: with 2-3 seeds s is itself very "
    "uncertain, so 2 SE is a lenient threshold (a t-test at 2 seeds would need about 4.3 SE); "
    "seed pairs share seeds, so merge and connectivity values are not independent; the many "
    "measurements are not corrected for multiple comparisons. Presets were chosen by running "
    "time only; nothing was tuned to make a claim hold."
)


@dataclass(frozen=True)
class Row:
    """One measurement: values per method and how to judge them."""

    measure: str
    lora: tuple[float, ...]
    coto: tuple[float, ...]
    higher_is_better: bool = True
    floor: tuple[float, float] = (0.0, 0.0)  # measurement SE b for (LoRA, CoTo)
    primary: bool = False
    unit: str = ""

    def judge(self) -> dict[str, Any]:
        """Means, standard deviations, standard errors, d, SE_d and the verdict."""
        out: dict[str, Any] = {
            "measure": self.measure,
            "primary": self.primary,
            "higher_is_better": self.higher_is_better,
            "unit": self.unit,
        }
        ses = []
        for name, vals, b in (
            ("lora", self.lora, self.floor[0]),
            ("coto", self.coto, self.floor[1]),
        ):
            v = np.asarray([x for x in vals if x is not None and math.isfinite(x)], dtype=float)
            k = int(v.size)
            mean = float(v.mean()) if k else None
            sd = float(v.std(ddof=1)) if k > 1 else None
            se = math.sqrt((sd**2 / k if sd is not None else 0.0) + b**2) if k else None
            out[name] = {
                "mean": mean,
                "sd": sd,
                "k": k,
                "se": se,
                "floor_se": b,
                "values": [float(x) for x in v],
            }
            ses.append(se)
        lo, co = out["lora"], out["coto"]
        if lo["k"] < 2 or co["k"] < 2:
            out |= {
                "d": _diff(lo, co, self.higher_is_better),
                "se_d": None,
                "verdict": INCONCLUSIVE,
                "why": "fewer than 2 values per method",
            }
            return out
        d = _diff(lo, co, self.higher_is_better)
        se_d = math.sqrt(sum(float(x or 0.0) ** 2 for x in ses))
        if d is not None and d > Z * se_d:
            verdict = HOLDS
        elif d is not None and d < -Z * se_d:
            verdict = FAILS
        else:
            verdict = INCONCLUSIVE
        out |= {
            "d": d,
            "se_d": se_d,
            "verdict": verdict,
            "why": f"d = {d:.4g}, 2 SE_d = {Z * se_d:.4g}",
        }
        return out


def _diff(lo: Mapping[str, Any], co: Mapping[str, Any], higher: bool) -> float | None:
    if lo["mean"] is None or co["mean"] is None:
        return None
    return co["mean"] - lo["mean"] if higher else lo["mean"] - co["mean"]


def binomial_se(p: float | None, n: int | None) -> float:
    if p is None or not n or not math.isfinite(p):
        return 0.0
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / n)


def _mean(x: Sequence[float]) -> float | None:
    return float(np.mean(x)) if len(x) else None


def _by(rows: Sequence[Mapping[str, Any]], method: str, **match: Any) -> list[Mapping[str, Any]]:
    return [
        r for r in rows if r["method"] == method and all(r.get(k) == v for k, v in match.items())
    ]


def _acc_row(
    measure: str,
    rows_by_method: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    primary: bool = False,
) -> Row:
    vals = {m: tuple(float(r["accuracy"]) for r in rs) for m, rs in rows_by_method.items()}
    floors = tuple(
        binomial_se(_mean(vals[m]), int(rows_by_method[m][0]["n"]) if rows_by_method[m] else None)
        for m in ("lora", "coto")
    )
    return Row(measure, vals["lora"], vals["coto"], True, (floors[0], floors[1]), primary, "acc")


Claim = dict[str, Any]


def _claim(key: str, statement: str, rows: Sequence[Row], skipped: str = "") -> Claim:
    judged = [r.judge() for r in rows]
    prim = next((j for j in judged if j["primary"]), None)
    verdict = prim["verdict"] if prim is not None else INCONCLUSIVE
    if skipped and prim is None:
        verdict = f"not measured ({skipped})"
    return {"claim": key, "statement": statement, "verdict": verdict, "rows": judged}


def generalisation(single: Mapping[str, Any]) -> Claim:
    rows = single["runs"]
    by = {m: _by(rows, m) for m in ("lora", "coto")}
    lp = {m: tuple(float(r["logprob"]) for r in by[m]) for m in by}
    return _claim(
        "generalisation",
        "CoTo adapters are more accurate on the task than LoRA adapters trained alike.",
        [
            _acc_row(f"accuracy, all adapters on ({single['split']})", by, primary=True),
            Row("mean log p(true label)", lp["lora"], lp["coto"], True, (0.0, 0.0), False, "nats"),
        ],
    )


def merging(merge: Mapping[str, Any], cross: Mapping[str, Any] | None) -> Claim:
    rows: list[Row] = []
    merges = merge.get("merges", [])
    for space, ratio in (
        ("factor", "1:1"),
        ("factor", "1:2"),
        ("factor", "1:1:1"),
        ("delta", "1:1"),
        ("delta", "1:2"),
        ("delta", "1:1:1"),
    ):
        by = {m: _by(merges, m, label=ratio, space=space) for m in ("lora", "coto")}
        if not by["lora"] and not by["coto"]:
            continue
        what = "linear fusion, PEFT factor space" if space == "factor" else "exact, delta space"
        rows.append(
            _acc_row(
                f"{ratio} merge of seeds, accuracy ({what})",
                by,
                primary=(space, ratio) == ("factor", "1:1"),
            )
        )
    if cross and "merges" in cross:
        tasks = list(cross["tasks"])
        for label in sorted({r["label"] for r in cross["merges"]}):
            vals: dict[str, list[float]] = {}
            floors = []
            for m in ("lora", "coto"):
                per_seed: dict[int, dict[str, Mapping[str, Any]]] = {}
                for r in _by(cross["merges"], m, label=label):
                    per_seed.setdefault(r["seeds"][0], {})[r["eval_task"]] = r
                vals[m] = [
                    float(np.mean([d[t]["accuracy"] for t in tasks]))
                    for d in per_seed.values()
                    if all(t in d for t in tasks)
                ]
                first = next(iter(per_seed.values()), {})
                var = (
                    sum(
                        binomial_se(
                            _mean([d[t]["accuracy"] for d in per_seed.values()]), first[t]["n"]
                        )
                        ** 2
                        for t in tasks
                        if t in first
                    )
                    / 4
                )
                floors.append(math.sqrt(var))
            rows.append(
                Row(
                    f"cross-task {label} merge, mean accuracy on {' and '.join(tasks)}",
                    tuple(vals["lora"]),
                    tuple(vals["coto"]),
                    True,
                    (floors[0], floors[1]),
                    False,
                    "acc",
                )
            )
    return _claim(
        "merging", "Merged CoTo adapters keep more accuracy than merged LoRA adapters.", rows
    )


def pruning(prune: Mapping[str, Any]) -> Claim:
    runs = prune["runs"]
    n = int(runs[0]["full"]["n"]) if runs else None
    rows = []
    for measure, names, primary in (
        (
            "everyother (mean of even and odd layers kept), accuracy",
            ("everyother-even", "everyother-odd"),
            True,
        ),
        ("mean accuracy over the 8 pruning strategies", None, False),
    ):
        vals = {}
        for m in ("lora", "coto"):
            out = []
            for r in _by(runs, m):
                st = r["strategies"]
                keys = [k for k in st if k != "all"] if names is None else list(names)
                got = [st[k]["accuracy"] for k in keys if k in st]
                if got:
                    out.append(float(np.mean(got)))
            vals[m] = tuple(out)
        floors = (binomial_se(_mean(vals["lora"]), n), binomial_se(_mean(vals["coto"]), n))
        rows.append(Row(measure, vals["lora"], vals["coto"], True, floors, primary, "acc"))
    return _claim(
        "pruning robustness",
        "CoTo adapters lose less accuracy than LoRA adapters when whole adapters are pruned.",
        rows,
    )


def shapley_balance(shapley: Mapping[str, Any]) -> Claim:
    runs = shapley["runs"]
    rows = []
    for measure, field, primary in (
        (
            "coefficient of variation of per-layer Shapley contributions (lower = more balanced)",
            "layer_cv",
            True,
        ),
        ("Gini of |Shapley values| (lower = more balanced)", "gini_abs", False),
    ):
        vals = {
            m: tuple(
                float(r["balance"][field])
                for r in _by(runs, m)
                if r["balance"].get(field) is not None
            )
            for m in ("lora", "coto")
        }
        rows.append(Row(measure, vals["lora"], vals["coto"], False, (0.0, 0.0), primary))
    return _claim(
        "balanced Shapley contributions",
        "CoTo spreads the adapters' contributions more evenly over layers than LoRA.",
        rows,
    )


def connectivity(lmc: Mapping[str, Any]) -> Claim:
    if "pairs" not in lmc:
        return _claim("connectivity", _LMC_TEXT, [], skipped=str(lmc.get("skipped", "")))
    pairs = lmc["pairs"]
    rows = []
    for space in ("factor", "delta"):
        for metric, primary in (("accuracy", space == "factor"), ("loss", False)):
            vals, floors = {}, []
            for m in ("lora", "coto"):
                ps = [p for p in pairs if p["method"] == m and space in p["barriers"]]
                vals[m] = tuple(p["barriers"][space][metric]["barrier"] for p in ps)
                ends = [
                    0.5
                    * (
                        p["barriers"][space]["accuracy"]["a0"]
                        + p["barriers"][space]["accuracy"]["a1"]
                    )
                    for p in ps
                ]
                floors.append(
                    binomial_se(_mean(ends), lmc.get("n")) if metric == "accuracy" else 0.0
                )
            rows.append(
                Row(
                    f"{metric} barrier between seeds ({space} space)",
                    vals["lora"],
                    vals["coto"],
                    False,
                    (floors[0], floors[1]),
                    primary,
                    metric,
                )
            )
    return _claim("connectivity", _LMC_TEXT, rows)


_LMC_TEXT = (
    "CoTo adapters of different seeds are linearly connected: a smaller barrier on the straight "
    "path between them than between LoRA adapters."
)


def build_claims(summaries: Mapping[str, Mapping[str, Any] | None]) -> list[Claim]:
    """All five claims from the stage summaries (a missing stage gives a 'not measured' claim)."""
    out = []
    makers = (
        ("generalisation", lambda s: generalisation(s["single"]), ("single",)),
        ("merging", lambda s: merging(s["merge"], s.get("cross")), ("merge",)),
        ("pruning robustness", lambda s: pruning(s["prune"]), ("prune",)),
        ("balanced Shapley contributions", lambda s: shapley_balance(s["shapley"]), ("shapley",)),
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
                    "verdict": f"not measured (stage {missing[0]} not finished)",
                }
            )
        else:
            out.append(make(summaries))
    return out
