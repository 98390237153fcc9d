"""Benchmark: TIES-merge two LoRA adapters shaped like a 1B-parameter LLaMA-style model.

Shapes: ``--layers`` (default 16) layers x 7 projections (q, k, v, o: 2048x2048; gate, up:
2048->5632; down: 5632->2048), rank 16, alpha 32, float32. Measured, each in a fresh
subprocess (peak RSS = the child's ``ru_maxrss``; ``baseline`` = RSS after imports; CPU = user +
system time of the measured region, ``time.process_time``, all threads; the better guide on a
loaded machine):

- coto-tools, factor space (PEFT ``ties``) and delta space (PEFT ``ties_svd``, rank 32):
  ``merge_files`` = open + stream + merge + save. No base model.
- PEFT 0.21 ``add_weighted_adapter`` (same combination types, density, svd_rank), on a model
  with the same ``nn.Linear`` shapes. PEFT needs real base weights: the base is built on the meta
  device, materialised on CPU in float32 and filled (as a loaded checkpoint would be). Timed:
  loading both adapters (``PeftModel.from_pretrained`` + ``load_adapter``), the merge, and saving
  the merged adapter; base construction is reported separately and excluded from the time.

Outputs are compared afterwards (factor: max |A - A'|, |B - B'|; delta: max relative error of
``B @ A`` per module). Rerun: ``python benchmarks/bench_merge.py [--layers N] [--spaces
factor,delta] [--no-peft] [--threads T]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, INTER, RANK, ALPHA, DENSITY = 2048, 5632, 16, 32, 0.5
PROJ = {  # name -> (in, out)
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (HIDDEN, INTER),
    "mlp.up_proj": (HIDDEN, INTER),
    "mlp.down_proj": (INTER, HIDDEN),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_inputs(root: Path, layers: int) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    paths = []
    for k, name in enumerate(("a", "b")):
        g = torch.Generator().manual_seed(k)
        tensors = {}
        for layer in range(layers):
            for proj, (i, o) in PROJ.items():
                key = f"base_model.model.model.layers.{layer}.{proj}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, i, generator=g) / i**0.5
                tensors[f"{key}.lora_B.weight"] = torch.randn(o, RANK, generator=g) * 0.01
        d = root / name
        d.mkdir()
        save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
        cfg = {
            "peft_type": "LORA",
            "r": RANK,
            "lora_alpha": ALPHA,
            "target_modules": sorted({p.split(".")[-1] for p in PROJ}),
            "task_type": None,
            "bias": "none",
            "lora_dropout": 0.0,
        }
        (d / "adapter_config.json").write_text(json.dumps(cfg))
        paths.append(d)
    return paths


def child_coto(space: str, inputs: list[str], out: str) -> dict:
    from coto_tools.merge import MergeConfig, merge_files

    base = _rss_mb()
    cfg = MergeConfig(method="ties", weights=(1.0, 1.0), density=DENSITY, space=space)
    t0, c0 = time.perf_counter(), time.process_time()
    res = merge_files(inputs, cfg, out)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    energy = res.report.energy_kept
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "baseline_mb": base,
        "peak_mb": _rss_mb(),
        "min_energy": min(energy.values()) if energy else None,
    }


def _peft_base(layers: int):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attn = nn.Module()
            self.mlp = nn.Module()
            for proj, (i, o) in PROJ.items():
                parent, leaf = proj.split(".")
                setattr(getattr(self, parent), leaf, nn.Linear(i, o, bias=False))

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([Layer() for _ in range(layers)])

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Inner()

    with torch.device("meta"):
        m = Model()
    m = m.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.02, generator=g)
    return m


def child_peft(space: str, inputs: list[str], out: str, layers: int) -> dict:
    import warnings

    import torch
    from peft import PeftModel

    torch.manual_seed(0)
    base_rss = _rss_mb()
    t0 = time.perf_counter()
    model = _peft_base(layers)
    t_base = time.perf_counter() - t0
    base_model_rss = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    pm = PeftModel.from_pretrained(model, inputs[0], adapter_name="a")
    pm.load_adapter(inputs[1], adapter_name="b")
    t_load, c_load = time.perf_counter() - t0, time.process_time() - c0
    kw = {"density": DENSITY, "majority_sign_method": "total"}
    ctype = "ties" if space == "factor" else "ties_svd"
    if space == "delta":
        kw["svd_rank"] = 2 * RANK
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.add_weighted_adapter(["a", "b"], [1.0, 1.0], "m", combination_type=ctype, **kw)
    t_merge, c_merge = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    pm.save_pretrained(out, selected_adapters=["m"])
    t_save, c_save = time.perf_counter() - t0, time.process_time() - c0
    return {
        "wall_s": t_load + t_merge + t_save,
        "cpu_s": c_load + c_merge + c_save,
        "merge_only_s": t_merge,
        "load_s": t_load,
        "save_s": t_save,
        "base_build_s": t_base,
        "baseline_mb": base_rss,
        "after_base_mb": base_model_rss,
        "peak_mb": _rss_mb(),
    }


def compare(ours: Path, peft_dir: Path, space: str) -> str:

    from coto_tools.adapters import open_checkpoint

    a = open_checkpoint(ours)
    b = open_checkpoint(peft_dir)
    if set(a.module_names) != set(b.module_names):
        return f"module names differ ({len(a.module_names)} vs {len(b.module_names)})"
    worst_a = worst_b = worst_rel = 0.0
    for name in a.module_names:
        ma, mb = a.module(name), b.module(name)
        if space == "factor":
            worst_a = max(worst_a, float((ma.A - mb.A).abs().max()))
            worst_b = max(worst_b, float((ma.B - mb.B).abs().max()))
        else:
            da, db = ma.delta(), mb.delta()
            worst_rel = max(worst_rel, float((da - db).norm() / db.norm().clamp_min(1e-30)))
    if space == "factor":
        return f"max |A - A_peft| = {worst_a:.2e}, max |B - B_peft| = {worst_b:.2e}"
    return f"max over modules of ||ΔW - ΔW_peft||_F / ||ΔW_peft||_F = {worst_rel:.2e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--spaces", default="factor,delta")
    ap.add_argument("--no-peft", action="store_true")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads in each child (0: default)"
    )
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--make-inputs", help=argparse.SUPPRESS)
    ap.add_argument("--compare", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compare:
        ours, theirs, space = args.compare
        print(compare(Path(ours), Path(theirs), space))
        return
    if args.make_inputs:
        make_inputs(Path(args.make_inputs), args.layers)
        return
    if args.child:
        kind, space, out, *inputs = args.child
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        if kind == "coto":
            res = child_coto(space, inputs, out)
        else:
            res = child_peft(space, inputs, out, args.layers)
        print(json.dumps(res))
        return
    import importlib.util

    have_peft = not args.no_peft and importlib.util.find_spec("peft") is not None
    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        root = Path(tmp)
        # Inputs are built in their own process: a child's ru_maxrss starts from its parent's
        # RSS at fork, so the parent must not have imported torch or held the tensors.
        subprocess.run(
            [sys.executable, __file__, "--make-inputs", str(root), "--layers", str(args.layers)],
            check=True,
        )
        inputs = [root / "a", root / "b"]
        print(
            f"2 adapters: {args.layers} layers x 7 projections (hidden {HIDDEN}, intermediate "
            f"{INTER}), r={RANK}, float32; TIES density {DENSITY}, weights 1,1; torch threads "
            f"per child: {args.threads or 'default'}"
        )
        for space in args.spaces.split(","):
            ours = root / f"coto-{space}"
            argv = ["--layers", str(args.layers), "--threads", str(args.threads)]
            c = _run_child_layers(["coto", space, str(ours), *map(str, inputs)], argv)
            line = (
                f"[{space}] coto-tools: {c['wall_s']:.2f} s, CPU {c['cpu_s']:.2f} s (process "
                f"{c['process_s']:.1f} s, CPU {c['process_cpu_s']:.1f} s), "
                f"peak RSS {c['peak_mb']:.0f} MB (after imports {c['baseline_mb']:.0f} MB)"
            )
            if c["min_energy"] is not None:
                line += f", min energy kept {c['min_energy']:.4f}"
            print(line, flush=True)
            if not have_peft:
                print(f"[{space}] PEFT: not measured (peft not importable or --no-peft)")
                continue
            pdir = root / f"peft-{space}"
            p = _run_child_layers(["peft", space, str(pdir), *map(str, inputs)], argv)
            print(
                f"[{space}] PEFT add_weighted_adapter: {p['wall_s']:.2f} s, CPU {p['cpu_s']:.2f} s "
                f"(load {p['load_s']:.2f}"
                f" + merge {p['merge_only_s']:.2f} + save {p['save_s']:.2f}; base build "
                f"{p['base_build_s']:.1f} s excluded), peak RSS {p['peak_mb']:.0f} MB (after "
                f"imports {p['baseline_mb']:.0f} MB, with base model {p['after_base_mb']:.0f} MB)"
            )
            print(
                f"[{space}] PEFT process {p['process_s']:.1f} s, CPU {p['process_cpu_s']:.1f} s "
                "(incl. base build and imports)"
            )
            print(
                f"[{space}] ratios: PEFT/coto time {p['wall_s'] / c['wall_s']:.1f}x, CPU time "
                f"{p['cpu_s'] / c['cpu_s']:.1f}x "
                f"(merge call only: {p['merge_only_s'] / c['wall_s']:.2f}x; whole processes: "
                f"{p['process_s'] / c['process_s']:.2f}x), "
                f"coto/PEFT peak RSS {c['peak_mb'] / p['peak_mb']:.3f}"
            )
            # compared in a child too: importing torch here would raise later children's RSS
            cmp = subprocess.run(
                [sys.executable, __file__, "--compare", str(ours), str(pdir / "m"), space],
                capture_output=True,
                text=True,
                check=True,
            )
            print(f"[{space}] outputs: {cmp.stdout.strip()}", flush=True)
    print("rerun: python benchmarks/bench_merge.py " + " ".join(sys.argv[1:]))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run_child_layers(child: list[str], extra: list[str]) -> dict:
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(
        [sys.executable, __file__, *extra, "--child", *child],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {child[0]} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    out["process_cpu_s"] = _children_cpu() - c0
    return out


if __name__ == "__main__":
    main()
