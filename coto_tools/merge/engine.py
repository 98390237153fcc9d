"""Merging LoRA adapters module by module, streaming from disk; no base model is loaded.

Memory holds the output plus a batch of modules of each input at a time (about
:data:`READ_BATCH_BYTES` of factors): inputs are opened with
:func:`~coto_tools.adapters.open_checkpoint` (header only) and read with ``.modules(names)``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from coto_tools.adapters import (
    AdapterCheckpoint,
    LoraAdapter,
    LoraModule,
    open_checkpoint,
    save_adapter,
)
from coto_tools.adapters.outguard import check_output
from coto_tools.errors import MergeError
from coto_tools.merge.config import MergeConfig, MergeMethod, MergeSpace
from coto_tools.merge.registry import REGISTRY, ModuleParts

MergeInput = LoraAdapter | AdapterCheckpoint


class _Source:
    """A uniform view of an in-memory adapter or an opened (lazy) checkpoint."""

    def __init__(self, item: MergeInput) -> None:
        self.item = item
        if isinstance(item, AdapterCheckpoint):
            self.name = str(item.path)
            self.names = list(item.module_names)
            self.extra_keys = list(item.other_keys)
        elif isinstance(item, LoraAdapter):
            self.name = item.source
            self.names = list(item.modules)
            self.extra_keys = list(item.modules_to_save)
        else:
            raise MergeError(
                f"cannot merge a {type(item).__name__}; give LoraAdapter or AdapterCheckpoint"
            )
        self._set = set(self.names)

    def __contains__(self, module: str) -> bool:
        return module in self._set

    def shape(self, module: str) -> tuple[int, int, int]:
        """``(rank, in_features, out_features)`` without reading tensors."""
        if isinstance(self.item, AdapterCheckpoint):
            a, b = self.item.shapes(module)
            return int(a[0]), int(a[1]), int(b[0])
        m = self.item.modules[module]
        return m.rank, m.in_features, m.out_features

    def modules(self, modules: list[str]) -> dict[str, LoraModule]:
        if not modules:
            return {}
        if isinstance(self.item, AdapterCheckpoint):
            return self.item.modules(modules)
        return {m: self.item.modules[m] for m in modules}

    def nbytes(self, module: str) -> int:
        r, i, o = self.shape(module)
        return 4 * r * (i + o)

    def extras(self) -> dict[str, torch.Tensor]:
        if isinstance(self.item, AdapterCheckpoint):
            return self.item.extra_tensors()
        return dict(self.item.modules_to_save)


def _delta_ties(c: MergeConfig) -> bool:
    """Whether ``c`` is a delta-space ties/dare-ties merge (where ``ties_vote`` matters)."""
    return c.space is MergeSpace.DELTA and c.method in (MergeMethod.TIES, MergeMethod.DARE_TIES)


@dataclass(frozen=True)
class MergeReport:
    """What a merge did: the resolved options, per-module facts, and anything worth saying."""

    config: MergeConfig
    inputs: list[str]
    modules: int
    partial: dict[str, list[str]] = field(default_factory=dict)
    energy_kept: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    modules_to_save: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    output: str | None = None

    def record(self) -> dict[str, Any]:
        """What made the output: written to ``coto_provenance.json`` beside its config (a bare
        file: the config's ``coto`` key); read back as ``open_checkpoint(out).config["coto"]``."""
        c = self.config
        return {
            "command": "merge",
            "method": c.method.value,
            "weights": list(c.weights or ()),
            "density": c.density,
            "space": c.space.value if c.space is not None else None,
            "seed": c.seed,
            "majority_sign": c.majority_sign.value,
            "rank": c.rank,
            "knots_merge": c.knots_merge.value if c.method is MergeMethod.KNOTS else None,
            "ties_vote": c.ties_vote.value if _delta_ties(c) else None,
            "inputs": list(self.inputs),
            "min_energy_kept": min(self.energy_kept.values()) if self.energy_kept else None,
        }

    def summary(self) -> list[str]:
        """Human-readable lines: what was used, and where it went."""
        c = self.config
        space = c.space.value if c.space is not None else "?"
        exact = " (exact)" if c.method is MergeMethod.CAT and not self.energy_kept else ""
        lines = [f"method: {c.method.value}, {space} space{exact}"]
        if c.method is MergeMethod.KNOTS:
            lines[0] += f", blocks merged with {c.knots_merge.value}"
        lines.append("weights: " + ", ".join(f"{w:g}" for w in (c.weights or ())))
        if c.uses_density:
            lines.append(f"density: {c.density:g}")
        if c.uses_sign:
            lines.append(f"majority sign: {c.majority_sign.value}")
        if _delta_ties(c):
            lines.append(f"sign vote on {c.ties_vote.value} deltas")
        if c.method.value.startswith("dare"):
            lines.append(f"seed: {c.seed}")
        ranks = sorted(set(self.ranks.values()))
        lines.append(f"modules: {self.modules}, output rank(s): {', '.join(map(str, ranks))}")
        if self.energy_kept:
            vals = list(self.energy_kept.values())
            worst = min(self.energy_kept, key=self.energy_kept.__getitem__)
            lines.append(
                f"energy kept by the rank truncation: mean {sum(vals) / len(vals):.4f}, "
                f"min {min(vals):.4f} ({worst})"
            )
        for module, have in self.partial.items():
            lines.append(f"module {module} only in: {', '.join(have)} (merged from those)")
        for key, src in self.modules_to_save.items():
            lines.append(f"modules_to_save tensor {key} carried from {src}")
        lines.extend(self.notes)
        if self.output is not None:
            lines.append(f"output: {self.output}")
        return lines


@dataclass(frozen=True)
class MergeResult:
    adapter: LoraAdapter
    report: MergeReport


def _check(sources: list[_Source], order: list[str], space: MergeSpace) -> None:
    """Shape (and, in factor space, rank) agreement across inputs; all problems at once."""
    problems: list[str] = []
    for module in order:
        have = [s for s in sources if module in s]
        shapes = [(s.name, s.shape(module)) for s in have]
        dims = {(o, i) for _, (_, i, o) in shapes}
        if len(dims) > 1:
            listed = ", ".join(f"{n}: ΔW ({o}, {i})" for n, (_, i, o) in shapes)
            problems.append(f"module {module}: shapes differ ({listed})")
        elif space is MergeSpace.FACTOR and len({r for _, (r, _, _) in shapes}) > 1:
            listed = ", ".join(f"rank {r} in {n}" for n, (r, _, _) in shapes)
            problems.append(
                f"module {module}: factor space needs equal ranks (as PEFT's "
                f"add_weighted_adapter), "
                f"got {listed}; use --space delta or --method cat"
            )
    if problems:
        raise MergeError(f"{len(problems)} incompatible module(s): " + "; ".join(problems))


def _factor_merge(
    mods: list[LoraModule], weights: list[float], cfg: MergeConfig, gen: torch.Generator
) -> LoraModule:
    """PEFT's ``_generalized_task_arithmetic_weighted_adapter`` for one module."""
    fn = REGISTRY[cfg.method].factor
    assert fn is not None  # config validation allows factor space only where defined
    wa, wb = [], []
    for m, w in zip(mods, weights, strict=True):
        ws = w * m.scaling
        root = math.sqrt(abs(ws))
        wa.append(root if ws >= 0 else -root)
        wb.append(root)
    dtype = torch.promote_types(mods[0].A.dtype, torch.float32)
    A = fn([m.A.to(dtype) for m in mods], torch.tensor(wa), cfg, gen)
    B = fn([m.B.to(dtype) for m in mods], torch.tensor(wb), cfg, gen)
    out = mods[0].A.dtype
    return LoraModule(A=A.to(out), B=B.to(out), alpha=float(A.shape[0]))


def merge_adapters(
    inputs: Sequence[MergeInput], config: MergeConfig, *, progress: bool = False
) -> MergeResult:
    """Merge LoRA adapters (in memory or opened checkpoints) module by module.

    ``progress`` shows a tqdm bar on stderr when stderr is a terminal.

    Output modules have scaling 1 (``alpha = rank``) and the dtype of the first input holding
    them. Modules held by only some inputs are merged from those (their weights only).
    """
    sources = [_Source(x) for x in inputs]
    cfg = config.resolve(len(sources))
    assert cfg.weights is not None and cfg.space is not None
    order: list[str] = []
    seen: set[str] = set()
    for s in sources:
        for n in s.names:
            if n not in seen:
                seen.add(n)
                order.append(n)
    _check(sources, order, cfg.space)
    notes: list[str] = []
    run_cfg = cfg
    if (
        cfg.space is MergeSpace.FACTOR
        and len(sources) == 1
        and cfg.method is not MergeMethod.LINEAR
    ):
        run_cfg = replace(cfg, method=MergeMethod.LINEAR)
        notes.append(
            f"note: one input: merged linearly, as PEFT does for {cfg.method.value} in factor space"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    if cfg.space is MergeSpace.FACTOR:
        # factors are small (r x in, out x r): intra-op threads only add synchronisation, which
        # costs a lot on a loaded machine; restored below
        torch.set_num_threads(1)
    try:
        return _merge_loop(sources, order, cfg, run_cfg, gen, notes, progress)
    finally:
        torch.set_num_threads(threads)


READ_BATCH_BYTES = 16 << 20
"""Factor bytes (all inputs together, counted as float32) read per batch of modules."""


def _next_batch(sources: list[_Source], order: list[str], start: int) -> int:
    """End of the batch of modules ``order[start:end]`` read together (at least one module)."""
    total, end = 0, start
    while end < len(order):
        total += sum(s.nbytes(order[end]) for s in sources if order[end] in s)
        if total > READ_BATCH_BYTES and end > start:
            break
        end += 1
    return end


def _merge_loop(
    sources: list[_Source],
    order: list[str],
    cfg: MergeConfig,
    run_cfg: MergeConfig,
    gen: torch.Generator,
    notes: list[str],
    progress: bool,
) -> MergeResult:
    assert cfg.weights is not None and cfg.space is not None
    out: dict[str, LoraModule] = {}
    partial: dict[str, list[str]] = {}
    energy: dict[str, float] = {}
    capped: list[str] = []
    loaded: list[dict[str, LoraModule]] = [{} for _ in sources]
    next_read = 0
    for pos, module in enumerate(
        tqdm(
            order, desc="merge", unit="module", disable=None if progress else True, file=sys.stderr
        )
    ):
        if pos == next_read:  # read the next modules of every input, one file opening each
            next_read = _next_batch(sources, order, pos)
            for s, got in zip(sources, loaded, strict=True):
                got.update(s.modules([m for m in order[pos:next_read] if m in s]))
        idx = [i for i, s in enumerate(sources) if module in s]
        if len(idx) < len(sources):
            partial[module] = [sources[i].name for i in idx]
        mods = [loaded[i].pop(module) for i in idx]
        weights = [cfg.weights[i] for i in idx]
        if cfg.space is MergeSpace.FACTOR:
            out[module] = _factor_merge(mods, weights, run_cfg, gen)
            continue
        parts = ModuleParts(
            [m.A for m in mods], [m.B for m in mods], [m.scaling for m in mods], weights
        )
        rank = cfg.rank if cfg.rank is not None else sum(m.rank for m in mods)
        A, B, kept = REGISTRY[cfg.method].delta(parts, run_cfg, rank, gen)
        dtype = mods[0].A.dtype
        out[module] = LoraModule(A=A.to(dtype), B=B.to(dtype), alpha=float(A.shape[0]))
        if not (cfg.method is MergeMethod.CAT and A.shape[0] == sum(m.rank for m in mods)):
            energy[module] = kept
        if cfg.rank is not None and A.shape[0] < cfg.rank:
            capped.append(module)
    if capped:
        notes.append(
            f"note: {len(capped)} module(s) could not reach rank {cfg.rank} (their ΔW has lower "
            f"rank or dimensions), e.g. {capped[0]}"
        )
    carried: dict[str, str] = {}
    extras: dict[str, torch.Tensor] = {}
    for s in sources:
        new = [k for k in s.extra_keys if k not in extras]
        if new:
            tensors = s.extras()
            for k in new:
                extras[k] = tensors[k]
                carried[k] = s.name
    ignored = sorted({k for s in sources for k in s.extra_keys if carried.get(k) != s.name})
    if ignored:
        notes.append(f"note: modules_to_save tensors also in later inputs were ignored: {ignored}")
    first = sources[0].item
    adapter = LoraAdapter(out, config=dict(first.config), modules_to_save=extras, source="<merged>")
    report = MergeReport(
        config=cfg,
        inputs=[s.name for s in sources],
        modules=len(out),
        partial=partial,
        energy_kept=energy,
        ranks={n: m.rank for n, m in out.items()},
        modules_to_save=carried,
        notes=notes,
    )
    return MergeResult(adapter, report)


def _base_name(ckpt: AdapterCheckpoint) -> str | None:
    base = ckpt.config.get("base_model_name_or_path")
    return base.rstrip("/") if isinstance(base, str) and base.strip() else None


def check_same_base(
    ckpts: Sequence[AdapterCheckpoint], *, allow_different_bases: bool = False
) -> None:
    """Refuse to merge adapters of unrelated models: two inputs with no module name in common,
    or different ``base_model_name_or_path`` (where both name one), unless
    ``allow_different_bases``."""
    if allow_different_bases or len(ckpts) < 2:
        return
    names = [set(c.module_names) for c in ckpts]
    for i in range(len(ckpts)):
        for j in range(i + 1, len(ckpts)):
            if not names[i] & names[j]:
                raise MergeError(
                    f"{ckpts[i].path} and {ckpts[j].path} have no adapter module in common "
                    "(adapters of different models?); pass --allow-different-bases to merge "
                    "them anyway"
                )
    bases = {str(c.path): b for c in ckpts if (b := _base_name(c)) is not None}
    if len(set(bases.values())) > 1:
        shown = ", ".join(f"{p}: {b}" for p, b in bases.items())
        raise MergeError(
            f"the inputs were trained on different base models ({shown}); pass "
            "--allow-different-bases to merge them anyway"
        )


def default_output(first_input: str | Path) -> Path:
    """``merged/`` beside the first input; ``merged-2/``, ``merged-3/``... if that exists."""
    parent = Path(first_input).parent
    candidate = parent / "merged"
    k = 2
    while candidate.exists():
        candidate = parent / f"merged-{k}"
        k += 1
    return candidate


def merge_files(
    paths: Sequence[str | Path],
    config: MergeConfig,
    out: str | Path | None = None,
    *,
    force: bool = False,
    alpha: float | None = None,
    allow_pickle: bool = False,
    progress: bool = False,
    allow_different_bases: bool = False,
) -> MergeResult:
    """Open, merge, and write ``out`` (a PEFT dir, or a bare file if it ends in .safetensors).

    ``out`` defaults to :func:`default_output` of the first input. Every check (options,
    inputs, shapes, an existing output, an output that would replace or lie inside an input:
    :func:`~coto_tools.adapters.outguard.check_output`) happens before anything is written.
    Inputs with no module in common with each other, or made for different base models
    (``base_model_name_or_path``), are refused unless ``allow_different_bases``.
    """
    if not paths:
        raise MergeError("nothing to merge: give at least one input")
    config.resolve(len(paths))
    ckpts = [open_checkpoint(p, alpha=alpha, allow_pickle=allow_pickle) for p in paths]
    target = default_output(paths[0]) if out is None else Path(out)
    read = [*paths, *(c.weights_path for c in ckpts)]
    check_output(target, read, force=force, replaces=True)
    check_same_base(ckpts, allow_different_bases=allow_different_bases)
    result = merge_adapters(ckpts, config, progress=progress)
    report = replace(result.report, output=str(target))
    save_adapter(result.adapter, target, force=force, extra_config=report.record())
    return MergeResult(result.adapter, report)
