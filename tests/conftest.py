"""Test-wide settings: one torch thread (tiny models are faster on one thread, and CI has two
cores), no hub access, a private cache directory, and a non-interactive matplotlib backend."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("COTO_TOOLS_THREADS", "1")  # the CLI's thread default in tests (main())

import pytest  # noqa: E402  (environment must be set before the imports below)
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)

# Property tests draw the same examples on every run (a CI gate must not pass or fail by luck);
# HYPOTHESIS_PROFILE=explore draws fresh random examples each run, for hunting new failures.
settings.register_profile("default", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep the zero-shot cache of ``coto-tools tasks`` out of the user's home."""
    monkeypatch.setenv("COTO_TOOLS_CACHE", str(tmp_path_factory.getbasetemp() / "coto-cache"))


@pytest.fixture
def devices(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The ``device`` argument of every :class:`Evaluator` built while the test runs."""
    from coto_tools.runtime.evaluator import Evaluator

    seen: list[object] = []
    init = Evaluator.__init__

    def spy(self: Evaluator, *args: object, **kw: object) -> None:
        seen.append(kw.get("device"))
        init(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Evaluator, "__init__", spy)
    return seen
