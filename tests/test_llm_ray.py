"""``--dtype`` reaches Ray workers: a bfloat16 evaluation of a tiny LLaMA adapter on a 1-CPU
local Ray cluster equals the local one, and the example count is known. Skipped without Ray."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'coto-tools[ray]')")
pytest.importorskip("peft")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_llm_fixtures import peft_lm_adapter, save_llama  # noqa: E402
from test_user_task_fixtures import write_jsonl  # noqa: E402

from coto_tools.adapters.io import load_adapter  # noqa: E402
from coto_tools.runtime.evaluator import Evaluator  # noqa: E402
from coto_tools.runtime.executor import EvaluatorSpec, ExecutorConfig, ExecutorKind  # noqa: E402
from coto_tools.runtime.ray_executor import RayEvaluator  # noqa: E402
from coto_tools.tasks import get_task, task_spec  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_bf16_on_ray_equals_local(tmp_path: Path) -> None:
    base = save_llama(tmp_path / "llama")
    ad = load_adapter(peft_lm_adapter(base, tmp_path / "ad", seed=1, targets=("q_proj",)))
    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "the cat", "completion": " sat"}] * 3)
    spec_text = task_spec("user", {"base_model": str(base), "data": str(data)})
    ray_ev = RayEvaluator(
        EvaluatorSpec(spec_text, (("default", ad),)),
        ExecutorConfig(kind=ExecutorKind.ray, workers=1, device="cpu", dtype="bfloat16"),
    )
    local = Evaluator(get_task(spec_text), ad, dtype="bfloat16")
    try:
        full = dict.fromkeys(ad.modules, 1.0)
        assert ray_ev.dtype == local.dtype == torch.bfloat16
        assert ray_ev.value(full) == local.value(full) and ray_ev.value({}) == local.value({})
        assert ray_ev.n_examples == local.n_examples == 3
    finally:
        ray_ev.close()
        local.close()
