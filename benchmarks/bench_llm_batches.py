"""Benchmark: causal-LM batches bucketed by length, and the evaluator's memory estimate.

1. Padding: 200 random prompt/completion rows (6 to 120 tokens, word-level tokenizer of the
   tests) in batches of 16: tokens a forward computes in file order (each batch as wide as its
   longest row) against the length-bucketed batches the user tasks now build.
2. Memory: :func:`coto_tools.runtime.memory.estimate_memory` against the measured rise of the
   process's peak resident memory (``ru_maxrss``) during one scoring forward
   (:func:`coto_tools.tasks.lm_data.token_scores`, inference mode, float32, CPU) of a random
   LLaMA (hidden 256, 4 layers, vocabulary 32000), each shape in a fresh process (the peak is
   per process). CPU only: on CUDA ``torch.cuda.max_memory_allocated`` would be the measure.

Rerun:  python benchmarks/bench_llm_batches.py
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((4, 256), (8, 512), (2, 1024))


def padding() -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_llm_fixtures import save_llama  # noqa: PLC0415 - test helpers, only here
    from test_user_task_fixtures import WORDS  # noqa: PLC0415

    from coto_tools.tasks import get_task

    d = Path(tempfile.mkdtemp())
    base = save_llama(d / "llama")
    rng = random.Random(0)
    rows = [
        {
            "prompt": " ".join(rng.choices(WORDS, k=rng.randint(5, 100))),
            "completion": " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 20))),
        }
        for _ in range(200)
    ]
    path = d / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("user", base_model=str(base), data=str(path), batch_size=16, max_length=512)
    seqs = task.sequences()  # type: ignore[attr-defined]
    real = sum(len(s.ids) for s in seqs)
    chunks = [seqs[i : i + 16] for i in range(0, len(seqs), 16)]
    file_order = sum(len(c) * max(len(s.ids) for s in c) for c in chunks)
    bucketed = sum(b.inputs["input_ids"].numel() for b in task.batches("eval"))
    return (
        f"200 prompt/completion rows, batch 16: {real} real tokens; file-order batches compute "
        f"{file_order} ({file_order / real - 1:.0%} padding), length-bucketed {bucketed} "
        f"({bucketed / real - 1:.1%} padding)"
    )


def one_shape(rows: int, tokens: int) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from coto_tools.runtime.memory import estimate_memory
    from coto_tools.tasks.base import Batch
    from coto_tools.tasks.lm_data import SCORE_MASK, token_scores

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 32000, (rows, tokens))
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        SCORE_MASK: torch.ones_like(ids, dtype=torch.bool),
    }
    batch = Batch(inputs, torch.zeros(rows, dtype=torch.long))
    est = estimate_memory(model, [batch])
    small = Batch({k: v[:1, :8] for k, v in inputs.items()}, batch.labels[:1])
    with torch.inference_mode():
        token_scores(model, small)  # libraries and allocator warm before the baseline
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        token_scores(model, batch)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mib = float(1 << 20)
    return (
        f"batch {rows} x {tokens}: estimated activations {est.activations / mib:.0f} MiB, "
        f"measured peak RSS rise {(after - before) / mib:.0f} MiB (model {est.model / mib:.0f} "
        f"MiB, attention {model.config._attn_implementation})"
    )


def main() -> None:
    if len(sys.argv) == 3:
        print(one_shape(int(sys.argv[1]), int(sys.argv[2])))
        return
    print(padding())
    for rows, tokens in SHAPES:
        out = subprocess.run(
            [sys.executable, __file__, str(rows), str(tokens)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        print(out.stdout.strip().splitlines()[-1])
    print("rerun: python benchmarks/bench_llm_batches.py")


if __name__ == "__main__":
    main()
