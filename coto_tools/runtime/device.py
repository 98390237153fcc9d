"""Where an evaluator's model runs: ``--device auto|cpu|cuda|cuda:N``.

:func:`resolve_device` turns a request into a :class:`torch.device` (``auto``: ``cuda`` when
``torch.cuda.is_available()``, else ``cpu``); asking for CUDA where there is none is a
:class:`DeviceError` (one line; the CLI exits 2). :func:`check_device` validates the spelling
only (a Ray driver without a GPU may send work to GPU workers).

The device is always passed explicitly (``Evaluator(..., device=)``; the analyses take it from
their :class:`~coto_tools.runtime.executor.ExecutorConfig` through
:func:`~coto_tools.runtime.executor.local_device`); an evaluator given no device leaves its model
where it is (a task's model: on the CPU).
"""

from __future__ import annotations

import re

import torch

from coto_tools.errors import OptionError

AUTO, CPU, CUDA = "auto", "cpu", "cuda"
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"
_SPELLING = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DeviceLike = str | torch.device


class DeviceError(OptionError):
    """A device that is misspelt or not available here (e.g. ``cuda`` without CUDA)."""


def check_device(device: DeviceLike) -> str:
    """The request normalised (``auto``, ``cpu``, ``cuda``, ``cuda:N``); checks spelling only."""
    text = str(device).strip().lower()
    if not _SPELLING.match(text):
        raise DeviceError(f"--device {str(device)!r}: allowed {DEVICE_CHOICES}")
    return text


def resolve_device(device: DeviceLike = AUTO) -> torch.device:
    """The :class:`torch.device` of a request, checked against this machine's CUDA devices."""
    text = check_device(device)
    if text == AUTO:
        return torch.device(CUDA if torch.cuda.is_available() else CPU)
    if text == CPU:
        return torch.device(CPU)
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {text}: CUDA is not available here (torch {torch.__version__}, "
            "no visible GPU); use --device cpu or auto"
        )
    dev = torch.device(text)
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise DeviceError(f"--device {text}: only {count} CUDA device(s) visible (cuda:0..)")
    return dev


__all__ = [
    "DEVICE_CHOICES",
    "DeviceError",
    "DeviceLike",
    "check_device",
    "resolve_device",
]
