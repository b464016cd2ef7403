"""Engine vs transformers ``generate`` on SmolLM2-135M-Instruct, same run, same machine.

64 prompts with mixed lengths and per-prompt ``max_tokens`` uniform in 16..256, greedy.
transformers runs them as one left-padded batch (its batched ``generate``) with
``max_new_tokens`` = the largest ``max_tokens``; each prompt's useful tokens are its first
``max_tokens`` (or up to EOS), counted the same way for both. The engine gets the same
prompts and per-prompt limits. Output tokens/s of each and their ratio go to
``benchmarks/results/engine_vs_hf_<device>.json``.

    python -m benchmarks.engine_vs_hf [--num-prompts 64] [--device cpu]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from benchmarks.common import parse_options, write_result
from engine import LLM, SamplingParams
from engine.model_fetch import fetch_model
from engine.tokenizer import Tokenizer
from infra.harness.workloads import CORPUS


def make_workload(
    tokenizer: Tokenizer, num_prompts: int, seed: int
) -> tuple[list[list[int]], list[int]]:
    gen = torch.Generator().manual_seed(seed)
    corpus_ids = tokenizer.encode(CORPUS * 4, add_special_tokens=False)
    lengths = torch.randint(8, 512, (num_prompts,), generator=gen).tolist()
    starts = torch.randint(0, len(corpus_ids) - 512, (num_prompts,), generator=gen).tolist()
    prompts = [corpus_ids[s : s + n] for s, n in zip(starts, lengths, strict=True)]
    max_tokens = torch.randint(16, 257, (num_prompts,), generator=gen).tolist()
    return prompts, max_tokens


def useful_tokens(generated: list[int], limit: int, eos: int) -> int:
    """Tokens a caller asked for: up to ``limit``, ending at (and counting) the first EOS."""
    head = generated[:limit]
    return head.index(eos) + 1 if eos in head else len(head)


def run_transformers(
    model_dir: Path, prompts: list[list[int]], max_tokens: list[int], eos: int, device: str
) -> tuple[float, int]:
    # transformers' own annotations do not type-check `generate`; treat the model as opaque.
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(device).eval()
    width = max(len(p) for p in prompts)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else eos
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=mask,
            max_new_tokens=max(max_tokens),
            do_sample=False,
            pad_token_id=pad,
        )
    seconds = time.perf_counter() - start
    generated = out[:, width:].tolist()
    tokens = sum(useful_tokens(g, m, eos) for g, m in zip(generated, max_tokens, strict=True))
    return seconds, tokens


def run_engine(
    model_dir: Path, prompts: list[list[int]], max_tokens: list[int], device: str
) -> tuple[float, int, dict]:
    llm = LLM(str(model_dir), dtype="float32", device=device)
    params = [SamplingParams(temperature=0.0, max_tokens=m) for m in max_tokens]
    llm.generate(prompts[:2], params[:2], use_tqdm=False)  # warm-up, as transformers' load is
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return seconds, tokens, llm.engine.stats.as_dict()


def main() -> None:
    args = parse_options(__doc__, num_prompts=64, seed=0, device="cpu")

    model_dir = fetch_model("smollm2-135m-instruct")
    tokenizer = Tokenizer.from_pretrained(str(model_dir))
    prompts, max_tokens = make_workload(tokenizer, args.num_prompts, args.seed)
    eos = tokenizer.eos_token_id
    assert eos is not None

    engine_s, engine_tokens, engine_stats = run_engine(model_dir, prompts, max_tokens, args.device)
    hf_s, hf_tokens = run_transformers(model_dir, prompts, max_tokens, eos, args.device)
    engine_tps, hf_tps = engine_tokens / engine_s, hf_tokens / hf_s
    result = {
        "workload": {
            "model": "SmolLM2-135M-Instruct (fp32)",
            "num_prompts": len(prompts),
            "prompt_tokens": sum(len(p) for p in prompts),
            "prompt_len_range": [min(map(len, prompts)), max(map(len, prompts))],
            "max_tokens_range": [min(max_tokens), max(max_tokens)],
            "sampling": "greedy",
        },
        "engine": {"seconds": engine_s, "output_tokens": engine_tokens, "tokens_per_s": engine_tps},
        "transformers": {"seconds": hf_s, "output_tokens": hf_tokens, "tokens_per_s": hf_tps},
        "ratio_engine_over_transformers": engine_tps / hf_tps,
        "target_ratio": 2.0,
        "engine_stats": engine_stats,
    }
    path = write_result(f"engine_vs_hf_{args.device}", result)
    print(
        f"engine {engine_tps:.1f} tok/s ({engine_tokens} tokens, {engine_s:.1f}s) | "
        f"transformers {hf_tps:.1f} tok/s ({hf_tokens} tokens, {hf_s:.1f}s) | "
        f"ratio {engine_tps / hf_tps:.2f}x -> {path}"
    )


if __name__ == "__main__":
    main()
