"""Error rates and power of the reproduce verdict rule (coto_tools.reproduce.stats), beside the
rule it replaced (2 SE with a binomial floor added per method), on simulated per-document
accuracies like the built-in benchmark's (accuracy about 0.91 on 400 documents, seed sd of
accuracy about 0.013, a method x document interaction, a seed effect shared by the two methods
of a seed). Numbers only: no model is trained.

Rerun:
    python benchmarks/bench_verdict_rule.py --reps 2000
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from coto_tools.reproduce.stats import FAILS, HOLDS, paired_test


def simulate(
    rng: np.random.Generator, reps: int, k: int, n: int, shift: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-document correctness ``(reps, k, n)`` of LoRA and CoTo (CoTo's logit + ``shift``)."""
    a = rng.normal(3.2, 1.6, size=(reps, 1, n))
    c = rng.normal(0.0, 0.6, size=(reps, 1, n))
    shared = rng.normal(0.0, 0.08, size=(reps, k, 1))
    out = []
    for sign, delta in ((+0.5, 0.0), (-0.5, shift)):
        logit = a + sign * c + shared + rng.normal(0.0, 0.12, size=(reps, k, 1)) + delta
        out.append((rng.random((reps, k, n)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64))
    return out[0], out[1]


def new_rule(lo: np.ndarray, co: np.ndarray) -> str:
    x = co.mean(axis=1) - lo.mean(axis=1)
    return paired_test(x, doc_diffs=(co - lo).mean(axis=0), with_mde=False).verdict


def old_rule(lo: np.ndarray, co: np.ndarray) -> str:
    a, b = lo.mean(axis=1), co.mean(axis=1)
    k, n = a.size, lo.shape[1]
    se = math.sqrt(
        a.var(ddof=1) / k
        + b.var(ddof=1) / k
        + a.mean() * (1 - a.mean()) / n
        + b.mean() * (1 - b.mean()) / n
    )
    d = b.mean() - a.mean()
    return HOLDS if d > 2 * se else FAILS if d < -2 * se else "inconclusive"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--docs", type=int, default=400)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    print(f"{'seeds':>5} {'shift':>6} {'true d':>7} | {'new holds':>9} {'new fails':>9} | "
          f"{'old holds':>9} {'old fails':>9} | median smallest detectable (new)")  # fmt: skip
    for k in (2, 3, 4):
        for shift in (0.0, 0.25, 0.45):
            rng = np.random.default_rng(1000 * k + int(shift * 100))
            lo, co = simulate(rng, a.reps, k, a.docs, shift)
            new = np.array([new_rule(x, y) for x, y in zip(lo, co, strict=True)])
            old = np.array([old_rule(x, y) for x, y in zip(lo, co, strict=True)])
            mde = np.median(
                [
                    paired_test(y.mean(axis=1) - x.mean(axis=1), doc_diffs=(y - x).mean(axis=0)).mde
                    for x, y in zip(lo[:100], co[:100], strict=True)
                ]
            )
            print(
                f"{k:>5} {shift:>6.2f} {co.mean() - lo.mean():>+7.4f} | "
                f"{np.mean(new == HOLDS):>9.3f} {np.mean(new == FAILS):>9.3f} | "
                f"{np.mean(old == HOLDS):>9.3f} {np.mean(old == FAILS):>9.3f} | {mde:.4f}"
            )
    print(f"({a.reps} draws per row, {a.docs} documents; {time.perf_counter() - t0:.1f} s)")
    print(f"rerun: python benchmarks/bench_verdict_rule.py --reps {a.reps} --docs {a.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
