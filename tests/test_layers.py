"""The house's layers (ARCHITECTURE.md): each layer knows only the ones below it, and no two
modules import each other. Imports are read from the source (module level and inside
functions alike), so a lazy import counts as much as a top-level one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "coto_tools"


def imports_of(path: Path) -> set[str]:
    """The ``coto_tools`` modules a file imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("coto_tools"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("coto_tools"))
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def _uses(importer: str, target: str) -> bool:
    return any(m == target or m.startswith(target + ".") for m in MODULES[importer])


ANALYSES = ("lmc", "shapley", "prune", "merge", "train", "reproduce", "cli")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("coto_tools.runtime")))
def test_runtime_knows_no_analysis(module: str) -> None:
    bad = [a for a in ANALYSES if _uses(module, f"coto_tools.{a}")]
    assert bad == [], f"{module} imports {bad}"


@pytest.mark.parametrize(
    ("module", "above"),
    [
        ("coto_tools.tasks.options", "coto_tools.runtime"),
        ("coto_tools.tasks.presets", "coto_tools.train"),
    ],
)
def test_tasks_sit_below_runtime_and_training(module: str, above: str) -> None:
    assert not _uses(module, above)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("coto_tools.runtime.executor", "coto_tools.runtime.ray_executor"),
        ("coto_tools.shapley.outputs", "coto_tools.shapley.run"),
        ("coto_tools.train.loop", "coto_tools.train.run"),
    ],
)
def test_no_pair_imports_each_other(a: str, b: str) -> None:
    assert not (_uses(a, b) and _uses(b, a)), f"{a} <-> {b}"


def test_public_import_paths_still_work() -> None:
    from coto_tools.lmc.ray_points import PointRecorder, RayPointEvaluator  # noqa: F401
    from coto_tools.runtime.executor import (  # noqa: F401
        LOCAL,
        EvaluatorSpec,
        ExecutorConfig,
        ExecutorError,
        ExecutorKind,
        Recorder,
        executor_from_cli,
        make_evaluator,
    )
    from coto_tools.runtime.ray_executor import RayEvaluator  # noqa: F401
    from coto_tools.shapley.run import ShapleyRunResult  # noqa: F401
    from coto_tools.train import LogRow, TrainResult  # noqa: F401
    from coto_tools.train.loop import LOG_FIELDS
    from coto_tools.train.loop import TrainResult as LoopTrainResult
    from coto_tools.train.run import TrainResult as RunTrainResult

    assert LoopTrainResult is RunTrainResult and LOG_FIELDS[0] == "step"
