"""All benchmarks of coto-tools in one run: a table of ratios, each measured side by side.

Sections (``--only a,b,...``; default all):

- ``evaluator``: evaluations/s of the evaluator vs a naive one (fresh merged weights + full
  forward per configuration) on permutation chains of bbc-topic's quick split, 18 module
  players (``bench_evaluator.py``); goal >= 1.8x.
- ``shapley``: evaluations each estimator needs for a mean relative L2 error of 0.05, against
  plain permutation sampling and shapiq (``bench_shapley_estimators.py``), on the synthetic
  game and on every ``benchmarks/data/*.json`` table.
- ``merge``: TIES merge of two adapters, coto-tools vs PEFT ``add_weighted_adapter``, time and
  peak RSS (``bench_merge.py`` at a reduced shape: ``--merge-layers`` LLaMA-1B-like layers).
- ``train``: CoTo vs LoRA training step time (``bench_train.py`` with few steps).
- ``reproduce``: wall time of ``coto-tools reproduce --quick`` (if the command exists).

``--quick`` shrinks every section. Measurements use ``--threads`` torch threads (default 1);
the load average is printed with each section, since the machine may be shared.

Rerun:  python benchmarks/bench_all.py [--quick] [--only evaluator,merge] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SECTIONS = ("evaluator", "shapley", "merge", "train", "reproduce")
Row = tuple[str, str, str]  # (what, ratio, detail)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load avg {one:.2f} (5 min {five:.2f}) on {os.cpu_count()} cpus"


def section_evaluator(args: argparse.Namespace) -> list[Row]:
    import bench_evaluator as be
    import torch

    torch.set_num_threads(args.threads)
    adapter, task, label = be.bench_adapter(args.run)
    print(f"adapter: {label}")
    res = be.chains_side_by_side(task, adapter, budget=20 if args.quick else 54, seed=0)
    be.print_chains(res)
    rows: list[Row] = []
    for r in res["rows"][1:]:  # type: ignore[index]
        rows.append(
            (
                f"evaluator vs naive evals/s: {r['name'].removeprefix('evaluator, ')}",
                f"{r['speedup']:.2f}x",
                f"{r['evals_per_s']:.3f} vs {res['rows'][0]['evals_per_s']:.3f} eval/s, "  # type: ignore[index]
                f"{res['n_evaluations']} evals, max|dv| {r['max_abs_diff']:.0e}",
            )
        )
    times, diff = be.stacked_vs_sequential(task, adapter, reps=1 if args.quick else 2)
    rows.append(
        (
            "2 configs stacked (per-row gates) vs sequential",
            f"{times['sequential'] / times['stacked']:.2f}x",
            f"seq {times['sequential']:.1f} s, stacked {times['stacked']:.1f} s, "
            f"max|dlogit| {diff:.0e}",
        )
    )
    return rows


def section_shapley(args: argparse.Namespace) -> list[Row]:
    import bench_shapley_estimators as bse
    import numpy as np

    from coto_tools.shapley import TableGame, redundant_adapter_game

    seeds = 4 if args.quick else 20
    games: list[tuple[str, TableGame]] = [("synthetic n=12", redundant_adapter_game(12, 0))]
    for path in sorted((HERE / "data").glob("*.json")):
        games.append((path.name, TableGame.load(str(path), metric="logprob")))
    rows: list[Row] = []
    for label, game in games:
        phi = game.shapley_values()
        b_max = min(1 << game.n_players, 3200)
        grid = np.unique(np.round(np.geomspace(20, b_max, 300)).astype(int))
        ours = bse.ours_curves(game, phi, seeds, b_max, grid)
        shap = bse.shapiq_curves(game, phi, seeds, bse.SHAPIQ_GRID)
        base = bse.evals_to(ours["permutation"][0], grid, args.target)
        print(f"[{label}] {game.n_players} players, {seeds} seeds; evaluations to rel. L2 "
              f"<= {args.target} (permutation: {base:.0f})")  # fmt: skip
        for name, (err, _rho, secs) in list(ours.items()) + list(shap.items()):
            g = grid if name in ours else np.asarray(bse.SHAPIQ_GRID)
            need = bse.evals_to(err, g, args.target)
            ratio = base / need if np.isfinite(need) and np.isfinite(base) else float("nan")
            print(f"  {name:30s} {need:8.0f} evals  perm/this {ratio:5.2f}x  ({secs:.1f} s)")
            if name != "permutation":
                rows.append(
                    (
                        f"shapley [{label}] {name} vs permutation (evals to {args.target})",
                        f"{ratio:.2f}x",
                        f"{need:.0f} vs {base:.0f} evals, {seeds} seeds",
                    )
                )
    return rows


def section_merge(args: argparse.Namespace) -> list[Row]:
    import bench_merge as bm

    layers = 1 if args.quick else args.merge_layers
    print(
        f"shape: {layers} LLaMA-1B-like layer(s) x 7 projections (hidden {bm.HIDDEN}, "
        f"intermediate {bm.INTER}), r={bm.RANK}, 2 adapters, TIES density {bm.DENSITY}"
    )
    rows: list[Row] = []
    extra = ["--layers", str(layers), "--threads", str(args.threads)]
    with tempfile.TemporaryDirectory(prefix="bench_all_merge_") as tmp:
        root = Path(tmp)
        # inputs made in another process: a child's ru_maxrss starts at its parent's peak (Linux
        # keeps the high-water mark across fork/exec), so this process must stay small
        make = (
            f"import bench_merge, pathlib; bench_merge.make_inputs(pathlib.Path({tmp!r}), {layers})"
        )
        subprocess.run([sys.executable, "-c", make], cwd=HERE, check=True)
        inputs = [str(root / "a"), str(root / "b")]
        for space in ("factor", "delta"):
            c = bm._run_child_layers(["coto", space, str(root / f"c-{space}"), *inputs], extra)
            p = bm._run_child_layers(["peft", space, str(root / f"p-{space}"), *inputs], extra)
            same = bm.compare(root / f"c-{space}", root / f"p-{space}" / "m", space)
            print(
                f"  [{space}] coto {c['wall_s']:.2f} s, peak {c['peak_mb']:.0f} MB; PEFT "
                f"{p['wall_s']:.2f} s (merge call {p['merge_only_s']:.2f} s), peak "
                f"{p['peak_mb']:.0f} MB; outputs: {same}"
            )
            rows.append(
                (
                    f"merge ties [{space}] PEFT/coto time",
                    f"{p['wall_s'] / c['wall_s']:.2f}x",
                    f"{c['wall_s']:.2f} s vs {p['wall_s']:.2f} s, {layers} layer(s)",
                )
            )
            rows.append(
                (
                    f"merge ties [{space}] PEFT/coto peak RSS",
                    f"{p['peak_mb'] / c['peak_mb']:.2f}x",
                    f"{c['peak_mb']:.0f} MB vs {p['peak_mb']:.0f} MB",
                )
            )
    return rows


def section_train(args: argparse.Namespace) -> list[Row]:
    steps = 2 if args.quick else 5
    cmd = [sys.executable, str(HERE / "bench_train.py"), "--steps", str(steps)]
    cmd += ["--threads", str(args.threads), "--batch-size", "16" if args.quick else "32"]
    print("$ " + shlex.join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr[-2000:])
        return [("train CoTo/LoRA step time", "failed", f"exit {out.returncode}")]
    print(out.stdout.rstrip())
    m = re.search(r"coto ([\d.]+) ms/step, lora ([\d.]+) ms/step, ratio ([\d.]+)", out.stdout)
    if not m:
        return [("train CoTo/LoRA step time", "unparsed", "see output above")]
    return [
        (
            "train LoRA/CoTo step time (linear schedule)",
            f"{1 / float(m.group(3)):.2f}x",
            f"coto {m.group(1)} ms, lora {m.group(2)} ms per step, {2 * steps} steps",
        )
    ]


def section_reproduce(args: argparse.Namespace) -> list[Row]:
    cli = [sys.executable, "-m", "coto_tools"]  # the CLI of this interpreter, PATH or not
    probe = subprocess.run(
        [*cli, "reproduce", "--help"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        print("coto-tools reproduce: not available")
        return [("reproduce --quick wall time", "n/a", "command not available")]
    with tempfile.TemporaryDirectory(prefix="bench_all_repro_") as tmp:
        cmd = [*cli, "reproduce", "--quick", "--out", str(Path(tmp) / "out")]
        print("$ " + shlex.join(cmd))
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    if out.returncode != 0:
        print(out.stderr[-2000:])
        return [("reproduce --quick wall time", "failed", f"exit {out.returncode}")]
    return [("reproduce --quick wall time", f"{wall:.0f} s", "absolute, not a ratio")]


RUNNERS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "evaluator": section_evaluator,
    "shapley": section_shapley,
    "merge": section_merge,
    "train": section_train,
    "reproduce": section_reproduce,
}


def _run_section(name: str, argv: Sequence[str]) -> list[Row]:
    """One section in a fresh process (no state, memory or threads carried between sections)."""
    with tempfile.TemporaryDirectory(prefix="bench_all_") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, __file__, *argv, "--section", name, "--rows-out", str(out)]
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0 or not out.is_file():
            return [(name, "failed", f"exit {proc.returncode}")]
        return [tuple(r) for r in json.loads(out.read_text())]  # type: ignore[misc]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"of {','.join(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="smaller budgets, shapes and seeds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--run", default="/tmp/perf9/bbc-topic-60", help="bbc-topic run dir")
    ap.add_argument("--merge-layers", type=int, default=4, help="layers of the merge shape")
    ap.add_argument("--target", type=float, default=0.05, help="shapley rel. L2 target")
    ap.add_argument("--section", help=argparse.SUPPRESS)
    ap.add_argument("--rows-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    raw = list(argv if argv is not None else sys.argv[1:])
    if args.section:
        rows = RUNNERS[args.section](args)
        Path(args.rows_out).write_text(json.dumps(rows))
        return
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in chosen if s not in RUNNERS]
    if bad:
        ap.error(f"unknown section(s) {bad}; allowed: {', '.join(SECTIONS)}")
    table: list[Row] = []
    t_all = time.perf_counter()
    for name in chosen:
        print(f"\n=== {name} ({_load()}) ===", flush=True)
        t0 = time.perf_counter()
        table += _run_section(name, raw)
        print(f"--- {name}: {time.perf_counter() - t0:.0f} s ({_load()})", flush=True)
    total = time.perf_counter() - t_all
    print(f"\n=== summary ({total:.0f} s; threads {args.threads}; {_load()}) ===")
    w = max(len(r[0]) for r in table) if table else 10
    for what, ratio, detail in table:
        print(f"{what:{w}s}  {ratio:>8s}  {detail}")
    print(
        "rerun: python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    )


if __name__ == "__main__":
    main()
