"""Task plugins: ``--task-plugin module:function`` (or ``path/to/file.py:function``).

Protocol (docs/task_plugins.md): ``function(**options)`` returns a
:class:`~coto_tools.tasks.base.Task`. ``options`` are the user-task options given on the command
line (``base_model``, ``data``, ``label_prompts``, ``max_length``, ``batch_size``, ``limit``;
only those given), so a plugin may reuse ``--data`` and ``--base-model``; a function that takes
none of them is called with none. The object is checked to be a ``Task`` with every method the
evaluator needs. Any failure of the plugin's code (an exception or ``sys.exit`` while importing it,
calling the function or calling the task's methods) is one :class:`TaskError` line.
``get_task("plugin", spec=..., options={...})`` is the library form, and what
``coto.json``/``shapley.json`` record, so a rerun rebuilds the same task.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from coto_tools.errors import TaskError
from coto_tools.tasks.base import Batch, Task

_REQUIRED = ("build_model", "default_targets", "batches", "train_size", "train_batch", "logits")


def normalise_spec(spec: str) -> str:
    """``file.py:fn`` with an absolute path (so a record names the same file from anywhere)."""
    target, sep, fn = spec.rpartition(":")
    if not sep or not target or not fn:
        raise TaskError(f"--task-plugin {spec!r}: expected module:function or file.py:function")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise TaskError(f"--task-plugin {spec!r}: no such file {target}")
        return f"{path.resolve()}:{fn}"
    return spec


def _load_module(target: str, spec: str) -> Any:
    if target.endswith(".py"):
        path = Path(target)
        name = f"coto_task_plugin_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
        mspec = importlib.util.spec_from_file_location(name, path)
        if mspec is None or mspec.loader is None:
            raise TaskError(f"--task-plugin {spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[name] = module
        try:
            mspec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            del sys.modules[name]
            raise TaskError(
                f"--task-plugin {spec!r}: importing {path} failed: {_describe(exc)}"
            ) from exc
        return module
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise TaskError(f"--task-plugin {spec!r}: cannot import module {target}: {exc}") from exc
    except (Exception, SystemExit) as exc:  # the module's own code failed (or exited)
        raise TaskError(
            f"--task-plugin {spec!r}: importing module {target} failed: {_describe(exc)}"
        ) from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    return repr(exc)


_GUARDED = (*_REQUIRED, "metric_sums", "extra_metrics", "split_sizes")


class _Guarded:
    """A plugin task's method whose failures (any exception, or ``sys.exit``) become one
    :class:`TaskError` naming the plugin and the method."""

    def __init__(self, spec: str, name: str, method: Callable[..., Any]) -> None:
        self.spec, self.name, self.method = spec, name, method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self.method(*args, **kwargs)
        except TaskError:
            raise
        except (Exception, SystemExit) as exc:
            raise TaskError(
                f"--task-plugin {self.spec}: the task's {self.name}() failed: {_describe(exc)}"
            ) from exc
        problem = _check_result(self.name, result, args)
        if problem is not None:
            raise TaskError(
                f"--task-plugin {self.spec}: the task's {self.name}() returned {problem}"
            )
        return result


def _check_result(name: str, result: Any, args: tuple[Any, ...]) -> str | None:
    """What is wrong with a plugin method's return value, in words (None: nothing found).
    Shapes and types only: cheap enough for every call."""
    if name == "batches":
        if not isinstance(result, (list, tuple)):
            return f"a {type(result).__name__}, not a list of Batch"
        if not result:
            return "no batches (an empty list): the split has no examples"
        for i, batch in enumerate(result):
            problem = _batch_problem(batch)
            if problem is not None:
                return f"{problem} (batch {i})"
    elif name == "train_batch":
        return _batch_problem(result)
    elif name == "train_size":
        if isinstance(result, bool) or not isinstance(result, int) or result < 1:
            return f"{result!r}, not a positive int"
    elif name == "logits" and len(args) >= 2 and isinstance(args[1], Batch):
        n = len(args[1])
        if not isinstance(result, torch.Tensor) or result.ndim != 2 or result.shape[0] != n:
            shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result)
            return f"{shape}; expected (n_examples, n_classes) = ({n}, C) logits"
        if not result.is_floating_point():
            return f"logits of dtype {result.dtype}; expected floating point"
        labels = args[1].labels
        if n and (int(labels.min()) < 0 or int(labels.max()) >= result.shape[1]):
            return (
                f"{result.shape[1]} classes but the batch has labels "
                f"{int(labels.min())}..{int(labels.max())}"
            )
    return None


def _batch_problem(batch: Any) -> str | None:
    if not isinstance(batch, Batch):
        return f"a {type(batch).__name__}, not a Batch"
    inputs = batch.inputs
    if not isinstance(inputs, Mapping) or not inputs:
        return "a Batch whose inputs are not a non-empty dict of tensors"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in inputs.items()):
        return "a Batch whose inputs are not all tensors (name -> torch.Tensor)"
    labels = batch.labels
    if (
        not isinstance(labels, torch.Tensor)
        or labels.ndim != 1
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
        or labels.numel() == 0
    ):
        what = (
            f"shape {tuple(labels.shape)}, dtype {labels.dtype}"
            if isinstance(labels, torch.Tensor)
            else type(labels).__name__
        )
        return f"a Batch whose labels are not a non-empty 1-d integer tensor ({what})"
    return None


def _guard(task: Task, spec: str) -> Task:
    """``task`` with every method the tool calls wrapped in :class:`_Guarded` (on the
    instance: its class, and so :func:`~coto_tools.tasks.base.uses_metric_sums`, is unchanged)."""
    for name in _GUARDED:
        method = getattr(task, name, None)
        if callable(method) and not isinstance(method, _Guarded):
            try:
                setattr(task, name, _Guarded(spec, name, method))
            except (AttributeError, TypeError):  # __slots__ or a read-only attribute
                continue
    return task


def resolve_plugin(spec: str) -> Callable[..., Any]:
    """The function named by ``spec`` (``module:function`` or ``file.py:function``)."""
    spec = normalise_spec(spec)
    target, _, fn_name = spec.rpartition(":")
    module = _load_module(target, spec)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise TaskError(f"--task-plugin {spec!r}: {target} has no function {fn_name!r}")
    return fn


def plugin_task(*, spec: str, options: Mapping[str, Any] | None = None) -> Task:
    """Call the plugin function with ``options`` (see module doc) and check what it returns."""
    fn = resolve_plugin(spec)
    opts = dict(options or {})
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in opts if k not in params and not takes_any]
    if unknown:
        raise TaskError(
            f"--task-plugin {spec}: the function takes no option(s) {', '.join(unknown)} "
            f"(its parameters: {', '.join(params) or 'none'})"
        )
    try:
        task = fn(**opts)
    except TaskError:
        raise
    except (Exception, SystemExit) as exc:
        raise TaskError(f"--task-plugin {spec}: the function failed: {_describe(exc)}") from exc
    if not isinstance(task, Task):
        raise TaskError(
            f"--task-plugin {spec}: returned a {type(task).__name__}, expected a "
            "coto_tools.tasks.base.Task (see docs/task_plugins.md)"
        )
    missing = [m for m in _REQUIRED if not callable(getattr(task, m, None))]
    if missing:  # pragma: no cover - Task's ABC already refuses to instantiate these
        raise TaskError(f"--task-plugin {spec}: the task lacks {', '.join(missing)}")
    return _guard(task, spec)
