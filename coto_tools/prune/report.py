"""``prune_report.md``: each checkpoint's robustness in numbers and plain sentences, and a
comparison of two labels (LoRA vs CoTo) that says when a difference is within noise.

Noise rule for a difference ``d`` between two labels' means: the standard error of ``d`` is the
larger of (a) the binomial standard error ``sqrt(p_a(1-p_a)/n + p_b(1-p_b)/n)`` (accuracy only;
``n`` evaluation examples, not divided by the number of checkpoints since they share the
examples) and (b) the seed spread ``sqrt(sd_a²/k_a + sd_b²/k_b)`` when both labels have at least
two checkpoints. ``|d| <= 2·SE`` is reported as within noise. Without any estimate (a metric
other than accuracy and one checkpoint per label) no verdict is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coto_tools.plotting import display_name
from coto_tools.prune.run import CheckpointResult, PruneResult
from coto_tools.prune.tables import (
    Summary,
    auc_values,
    by_label,
    gain_retained,
    retained,
    strategy_values,
)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` examples."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else float("nan")


def _f(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def _ms(s: Summary, digits: int = 4) -> str:
    if s.k == 0:
        return "n/a"
    sd = "" if math.isnan(s.sd) else f" ± {s.sd:.{digits}f}"
    return f"{s.mean:.{digits}f}{sd} (k={s.k})"


@dataclass(frozen=True)
class Comparison:
    """``diff = b - a``; ``se``: its standard error (nan: none); ``basis``: how ``se`` was got."""

    diff: float
    se: float
    basis: str

    @property
    def verdict(self) -> str:
        if math.isnan(self.se):
            return "not judged (no noise estimate: one checkpoint per label)"
        if abs(self.diff) <= 2 * self.se:
            return f"within noise (|difference| <= 2 x {self.basis} {self.se:.4f})"
        return f"beyond noise (|difference| > 2 x {self.basis} {self.se:.4f})"


def compare(a: Summary, b: Summary, *, accuracy_n: int | None = None) -> Comparison:
    """Difference ``b - a`` of two labels' means with the noise rule of the module docstring."""
    parts: list[tuple[float, str]] = []
    if accuracy_n:
        se = math.sqrt(binomial_se(a.mean, accuracy_n) ** 2 + binomial_se(b.mean, accuracy_n) ** 2)
        parts.append((se, "binomial SE"))
    if a.k >= 2 and b.k >= 2:
        parts.append((math.sqrt(a.sd**2 / a.k + b.sd**2 / b.k), "seed-spread SE"))
    if not parts:
        return Comparison(b.mean - a.mean, float("nan"), "")
    se, basis = max(parts)
    return Comparison(b.mean - a.mean, se, basis)


def label_pair(labels: Sequence[str]) -> tuple[str, str] | None:
    """``(lora, coto)`` when both labels are present (any case), else the two labels if there
    are exactly two, else ``None``."""
    low = {lab.lower(): lab for lab in labels}
    if "lora" in low and "coto" in low:
        return low["lora"], low["coto"]
    return (labels[0], labels[1]) if len(labels) == 2 else None


def _headline(metric: str) -> tuple[str, bool]:
    """How a strategy's robustness is worded for ``metric``: accuracy uses ``retained``, the
    others ``gain_retained``."""
    if metric == "accuracy":
        return "of the unpruned accuracy", True
    return f"of the adapters' gain in {metric} over the base model", False


def _keep(c: CheckpointResult, metric: str, v: float) -> float:
    full, empty = c.full.get(metric), c.empty.get(metric)
    return retained(v, full) if metric == "accuracy" else gain_retained(v, full, empty)


def _checkpoint_words(c: CheckpointResult, metric: str) -> str:
    phrase, _ = _headline(metric)
    n = c.full.n
    out = [
        f"**{c.path}** ({c.label}): with all {len(c.modules)} adapters, accuracy "
        f"{c.full.accuracy:.4f} (binomial SE {binomial_se(c.full.accuracy, n):.4f}, n={n}); "
        f"with none, {c.empty.accuracy:.4f}. {metric}: {c.full.get(metric):.4f} vs "
        f"{c.empty.get(metric):.4f}."
    ]
    full, empty = c.full.get(metric), c.empty.get(metric)
    if not (full < empty if metric == "loss" else full > empty):
        out.append(
            f"The adapters do not improve {metric} over the base model on this split, so the "
            "retained fractions, gains and normalised AUCs below do not measure robustness here."
        )
    vals = {
        k: float(np.mean(v))
        for k, v in strategy_values(c, metric).items()
        if k not in ("all", "none")  # the two ends, not pruning strategies
    }
    if vals:
        keeps = {k: _keep(c, metric, v) for k, v in vals.items()}
        ordered = sorted((k for k in keeps if not math.isnan(keeps[k])), key=keeps.__getitem__)
        if ordered:
            lo, hi = ordered[0], ordered[-1]
            out.append(
                f"The pruning strategies keep between {_pct(keeps[lo])} ({lo}) and "
                f"{_pct(keeps[hi])} ({hi}) {phrase}."
            )
    for fam, vs in auc_values(c, metric).items():
        arr = np.asarray(vs)
        spread = f" ± {arr.std(ddof=1):.3f} over {len(arr)} seeds" if len(arr) > 1 else ""
        out.append(
            f"Removing adapters in {fam} order, the normalised AUC of {metric} is "
            f"{arr.mean():.3f}{spread}."
        )
    if c.rank is not None and c.rank.ranks:
        r, m = c.rank.ranks[-1], c.rank.metrics[-1]
        out.append(
            f"Truncating every adapter to rank {r} keeps {_pct(_keep(c, metric, m.get(metric)))} "
            f"{phrase}."
        )
    return " ".join(out)


def _span(layers: Sequence[int]) -> str:
    if not layers:
        return "none"
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


def thirds_text(cks: Sequence[CheckpointResult]) -> str:
    """How ``low``/``middle``/``high`` cut the layers of these checkpoints, derived from their
    modules (e.g. "6 layers: low 0-1, middle 2-3, high 4-5"); one entry per distinct layout."""
    from coto_tools.adapters.keys import parse_module_name
    from coto_tools.prune.strategies import third_layers

    out: list[str] = []
    for c in cks:
        towers: dict[str, set[int]] = {}
        for name in c.modules:
            key = parse_module_name(name)
            if key.layer is not None:
                towers.setdefault(str(key.tower or ""), set()).add(key.layer)
        for tower, layers in sorted(towers.items()):
            lo, mid, hi = third_layers(layers)
            where = f"{tower}: " if len(towers) > 1 and tower else ""
            text = (
                f"{where}{len(layers)} layers: low {_span(lo)}, middle {_span(mid)}, "
                f"high {_span(hi)}"
            )
            if text not in out:
                out.append(text)
    return "; ".join(out) if out else "no layer indices"


def _signed(metric: str) -> bool:
    """A ratio to the unpruned value means nothing for a metric that can be negative or where
    lower is better (logprob <= 0, loss): differences are shown instead."""
    return metric != "accuracy"


def _vs_full(v: float, full: float, metric: str) -> str:
    return f"{v - full:+.4f} vs all" if _signed(metric) else _pct(retained(v, full))


def _strategy_table(result: PruneResult, metric: str) -> list[str]:
    cks = result.checkpoints
    head = "| strategy | kept | " + " | ".join(f"{c.path} ({c.label})" for c in cks) + " |"
    lines = [head, "|" + "---|" * (2 + len(cks))]
    names = list(dict.fromkeys(s.strategy.name for c in cks for s in c.strategies))
    for name in ["none", *(n for n in names if n != "none")]:
        cells, kept = [], ""
        for c in cks:
            if name == "none":
                vs, kept = [c.empty.get(metric)], "0"
            else:
                rows = [s for s in c.strategies if s.strategy.name == name]
                vs = [s.metrics.get(metric) for s in rows]
                kept = kept or (f"{len(rows[0].kept)}/{len(c.modules)}" if rows else "")
            if not vs:
                cells.append("—")
                continue
            v = float(np.mean(vs))
            full, empty = c.full.get(metric), c.empty.get(metric)
            cells.append(
                f"{v:.4f} ({_vs_full(v, full, metric)}, gain {_pct(gain_retained(v, full, empty))})"
            )
        lines.append(f"| {name} | {kept} | " + " | ".join(cells) + " |")
    return lines


def _label_section(result: PruneResult) -> list[str]:
    metric = result.metric
    labels = result.labels
    lines = ["## By label", ""]
    vals = by_label(result, quantity="value", metric=metric)
    items = list(dict.fromkeys(k for d in vals.values() for k in d))
    lines += ["| strategy | " + " | ".join(labels) + " |", "|" + "---|" * (1 + len(labels))]
    for it in items:
        row = [_ms(vals[lab][it]) if it in vals.get(lab, {}) else "—" for lab in labels]
        lines.append(f"| {it} ({metric}) | " + " | ".join(row) + " |")
    aucs = by_label(result, quantity="auc_norm", metric=metric)
    for it in dict.fromkeys(k for d in aucs.values() for k in d):
        row = [_ms(aucs[lab][it], 3) if it in aucs.get(lab, {}) else "—" for lab in labels]
        lines.append(f"| AUC {it} (normalised, {metric}) | " + " | ".join(row) + " |")
    pair = label_pair(labels)
    if pair is None:
        return lines
    a, b = pair
    n = min(c.full.n for c in result.checkpoints)
    acc = by_label(result, quantity="value", metric="accuracy")
    lines += ["", f"## {display_name(b)} vs {display_name(a)}", ""]
    beyond: list[str] = []
    for it in items:
        if it not in acc.get(a, {}) or it not in acc.get(b, {}):
            continue
        sa, sb = acc[a][it], acc[b][it]
        cmp = compare(sa, sb, accuracy_n=n)
        lines.append(
            f"- {it}: accuracy {b} {sb.mean:.4f} vs {a} {sa.mean:.4f} "
            f"(difference {cmp.diff:+.4f}); {cmp.verdict}."
        )
        if cmp.verdict.startswith("beyond"):
            beyond.append(f"{it} ({b} {'higher' if cmp.diff > 0 else 'lower'})")
    for it in dict.fromkeys(k for d in aucs.values() for k in d):
        if it not in aucs.get(a, {}) or it not in aucs.get(b, {}):
            continue
        cmp = compare(aucs[a][it], aucs[b][it])
        lines.append(
            f"- normalised AUC, {it} order ({metric}): {b} {aucs[b][it].mean:.3f} vs {a} "
            f"{aucs[a][it].mean:.3f} (difference {cmp.diff:+.3f}); {cmp.verdict}."
        )
        if cmp.verdict.startswith("beyond"):
            beyond.append(f"AUC {it} ({b} {'higher' if cmp.diff > 0 else 'lower'})")
    ka = sum(c.label == a for c in result.checkpoints)
    kb = sum(c.label == b for c in result.checkpoints)
    lines.append("")
    if beyond:
        caveat = (
            " With one checkpoint per label these can still be seed-to-seed variation, which "
            "this run cannot measure."
            if min(ka, kb) < 2
            else ""
        )
        lines.append(f"Differences beyond noise: {', '.join(beyond)}; all others are within "
                     f"noise or not judged.{caveat}")  # fmt: skip
    else:
        lines.append(
            f"No difference between {b} and {a} exceeds the noise estimate: on these numbers "
            f"neither is shown to be more robust to pruning ({ka} vs {kb} checkpoint(s))."
        )
    return lines


def write_report(result: PruneResult) -> str:
    """The markdown text of ``prune_report.md``."""
    metric = result.metric
    cfg = result.config
    cks = result.checkpoints
    tasks = sorted({c.task for c in cks})
    lines = [
        "# Pruning robustness",
        "",
        f"Task {', '.join(tasks)}, split {cfg.split} ({cks[0].full.n} examples); metric for "
        f"curves and AUC: {metric} (every metric is in prune.csv). {len(cks)} checkpoint(s).",
        "",
        "Definitions: retained = metric(strategy) / metric(all adapters); gain = "
        "(metric(strategy) - metric(none)) / (metric(all) - metric(none)), the share of what the "
        "adapters add over the base model that survives. Normalised AUC = (area under the metric "
        "over the fraction of adapters removed, in [0, 1], minus metric(none)) / (metric(all) - "
        "metric(none)): 1 = nothing lost until the last adapter goes, 0.5 = a straight line, "
        "0 = everything lost at once. Thirds: numpy.array_split of each tower's layers, "
        f"numbered from 0 (here {thirds_text(cks)})."
        + (
            f" {metric} can be negative or lower-is-better, so a ratio to the unpruned value "
            "means nothing: the tables give the difference to all adapters on instead."
            if _signed(metric)
            else ""
        ),
        "",
        "## In words",
        "",
    ]
    lines += [_checkpoint_words(c, metric) + "\n" for c in cks]
    notes = [*result.notes, *(f"{c.path}: {n}" for c in cks for n in c.notes)]
    if notes:
        lines += ["Notes: " + "; ".join(notes) + ".", ""]
    vs_all = "difference to all" if _signed(metric) else "retained"
    lines += [f"## Strategies ({metric}: value ({vs_all}, gain))", ""]
    lines += _strategy_table(result, metric)
    curve_names = list(dict.fromkeys(k for c in cks for k in auc_values(c, metric)))
    if curve_names:
        lines += ["", f"## Fraction sweeps: normalised AUC of {metric}", ""]
        lines += ["| order | " + " | ".join(c.path for c in cks) + " |"]
        lines += ["|" + "---|" * (1 + len(cks))]
        for name in curve_names:
            cells = []
            for c in cks:
                vs = auc_values(c, metric).get(name, [])
                cells.append(_ms(Summary(float(np.mean(vs)), float(np.std(vs, ddof=1))
                                         if len(vs) > 1 else float("nan"), len(vs)), 3)
                             if vs else "—")  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ranked = [c for c in cks if c.rank is not None]
    if ranked:
        lines += ["", f"## Rank truncation ({metric}: value ({vs_all}))", ""]
        lines += ["| rank | " + " | ".join(c.path for c in ranked) + " |"]
        lines += ["|" + "---|" * (1 + len(ranked))]
        for r in sorted({r for c in ranked for r in c.rank.ranks}, reverse=True):  # type: ignore[union-attr]
            cells = []
            for c in ranked:
                rc = c.rank
                if rc is None or r not in rc.ranks:
                    cells.append("—")
                    continue
                v = rc.metrics[rc.ranks.index(r)].get(metric)
                cells.append(f"{v:.4f} ({_vs_full(v, c.full.get(metric), metric)})")
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
    if len(result.labels) > 1 or len(cks) > len(result.labels):
        lines += ["", *_label_section(result)]
    return "\n".join(lines).rstrip() + "\n"
