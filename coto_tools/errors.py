"""One error hierarchy for everything a user can get wrong.

The CLI turns any :class:`CotoError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


class CotoError(Exception):
    """Base class of every error caused by user input or user files."""


class CheckpointError(CotoError):
    """An adapter checkpoint cannot be read or is not valid LoRA."""


class UnsupportedAdapterError(CheckpointError):
    """The checkpoint is a LoRA variant coto-tools does not support (DoRA, lora_bias, ...)."""


class ValidationError(CheckpointError):
    """One or more problems found while validating a checkpoint (all listed at once)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        joined = "; ".join(self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s): {joined}")


class MergeError(CotoError):
    """Inputs to a merge are incompatible, or a merge option is out of range."""


class OptionError(CotoError):
    """A command-line or API option has a bad value."""


class OutputExistsError(CotoError):
    """The output path exists and overwriting was not requested."""


class TaskError(CotoError):
    """A task, its model or its data cannot be built."""


class ShapleyError(CotoError):
    """A Shapley estimation request cannot be honoured."""


UNKNOWN_OPTION = "unknown {what} {value!r}; allowed: {allowed}"


def enum_option(
    cls: type[E],
    value: Any,
    what: str,
    *,
    error: type[CotoError] = OptionError,
    message: str = UNKNOWN_OPTION,
) -> E:
    """``cls(value)``, or ``error`` with ``message`` (default :class:`OptionError` ``unknown
    WHAT 'value'; allowed: a, b, ...``; ``message`` is formatted with ``what``, ``value`` and
    ``allowed``)."""
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in cls)
        raise error(message.format(what=what, value=value, allowed=allowed)) from None
