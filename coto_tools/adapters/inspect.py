"""A per-module summary of a checkpoint (``coto-tools inspect``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coto_tools.adapters.io import open_checkpoint
from coto_tools.adapters.keys import parse_module_name
from coto_tools.errors import ValidationError


def inspect_checkpoint(
    path: str | Path, *, alpha: float | None = None, allow_pickle: bool = False
) -> dict[str, Any]:
    """Rows (one per module) and totals, streaming one module at a time."""
    ckpt = open_checkpoint(path, alpha=alpha, allow_pickle=allow_pickle)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    total_params = 0
    total_sq = 0.0
    for name in ckpt.module_names:
        try:
            mod = ckpt.module(name)
        except ValidationError as exc:  # keep going: every bad module is named at once
            problems.extend(exc.problems)
            continue
        key = parse_module_name(name)
        norm = mod.delta_norm()
        params = mod.A.numel() + mod.B.numel()
        total_params += params
        total_sq += norm**2
        rows.append(
            {
                "name": name,
                "tower": key.tower,
                "layer": key.layer,
                "kind": key.kind,
                "in_features": mod.in_features,
                "out_features": mod.out_features,
                "rank": mod.rank,
                "alpha": mod.alpha,
                "scaling": mod.scaling,
                "delta_norm": norm,
                "params": params,
                "dtype": str(mod.A.dtype).removeprefix("torch."),
            }
        )
    if problems:
        raise ValidationError(str(ckpt.weights_path), problems)
    unknown = [r["name"] for r in rows if r["layer"] is None or r["kind"] is None]
    return {
        "path": str(path),
        "weights": str(ckpt.weights_path),
        "alpha_source": ckpt.alpha_source,
        "use_rslora": ckpt.use_rslora,
        "base_model": ckpt.config.get("base_model_name_or_path"),
        "modules": rows,
        "modules_to_save": list(ckpt.other_keys),
        "totals": {
            "modules": len(rows),
            "params": total_params,
            "delta_norm": total_sq**0.5,
            "unknown_layout": len(unknown),
        },
    }


def render_table(report: dict[str, Any]) -> str:
    cols = ["name", "tower", "layer", "kind", "in", "out", "rank", "alpha", "scaling", "||dW||_F"]
    lines = []
    for r in report["modules"]:
        lines.append(
            [
                r["name"],
                r["tower"],
                "-" if r["layer"] is None else str(r["layer"]),
                r["kind"] or "-",
                str(r["in_features"]),
                str(r["out_features"]),
                str(r["rank"]),
                f"{r['alpha']:g}",
                f"{r['scaling']:.4g}",
                f"{r['delta_norm']:.4g}",
            ]
        )
    widths = [
        max(len(c), *(len(row[i]) for row in lines)) if lines else len(c)
        for i, c in enumerate(cols)
    ]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    for row in lines:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    t = report["totals"]
    out.append("")
    out.append(
        f"{t['modules']} modules, {t['params']:,} parameters, "
        f"total ||dW||_F {t['delta_norm']:.4g}; "
        f"alpha from {report['alpha_source']}; base model: {report['base_model'] or 'unknown'}"
    )
    if t["unknown_layout"]:
        out.append(
            f"{t['unknown_layout']} module(s) with an unrecognised layout (layer/kind unknown)"
        )
    if report["modules_to_save"]:
        out.append(
            f"modules_to_save tensors carried through: {', '.join(report['modules_to_save'])}"
        )
    return "\n".join(out)
