"""The CPU's C kernels for attention and the per-token operations against the PyTorch
references, in the engine, step by step.

One engine on SmolLM2-135M-Instruct in fp32 (the default settings). Its running batch is
stepped with the kernel backend alternating between ``auto`` (what users get: the whole
decoder stack in one C call, engine/models/cpu_decoder.py, which runs the C attention,
kernels/cpu_attention.py, and the C RMSNorm, rotary, KV-store and SiLU-and-mul,
kernels/cpu_pointwise.py) and ``torch`` (the
references: gather K/V then SDPA, and PyTorch's tensor ops). The projections run on the
packed weights in both arms. Both arms time the same batches on the same machine at nearly
the same moment:

- ``decode_R_ctxC``: ``R`` requests with prompts of ``C`` tokens are prefilled, then
  ``--steps`` decode steps of ``R`` rows are timed per arm: the median step, in ms;
- ``verify_R``: the same with n-gram speculation (``benchmarks.spec_decode``'s config) on
  its extraction prompts: steps that verify up to k + 1 tokens per request.

Greedy tokens of 8 prompts under each backend are compared token for token.

    python -m benchmarks.cpu_attention [--steps 24] [--name cpu_attention]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmarks.common import write_result
from benchmarks.engine_vs_hf import make_workload
from benchmarks.spec_decode import NGRAM, extraction_prompts
from engine import LLM, SamplingParams
from engine.llm_engine import LLMEngine
from engine.model_fetch import fetch_model
from kernels import Backend, set_backend
from kernels.attention import MAX_SHORT_QUERY

ARMS = (Backend.AUTO, Backend.TORCH)


def alternating_steps(engine: LLMEngine, prompts: list[list[int]], steps: int) -> dict[str, float]:
    """Median step time (ms) per arm over ``steps`` steps each, arms alternating, once every
    request is past its prefill."""
    engine.reset_prefix_cache()
    params = SamplingParams(temperature=0.0, max_tokens=2 * steps + 64, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"a{i}", prompt, params)
    for _ in range(1000):  # prefill until every request decodes (or verifies its drafts)
        engine.step()
        last = engine.stats.last_step
        if (
            last is not None
            and last.num_scheduled_requests == len(prompts)
            and last.num_batched_tokens <= len(prompts) * MAX_SHORT_QUERY
        ):
            break
    else:
        raise AssertionError("the requests never ran together: a smaller batch fits")
    times: dict[str, list[float]] = {arm.value: [] for arm in ARMS}
    for i in range(2 * steps):
        arm = ARMS[i % 2]
        set_backend(arm)
        start = time.perf_counter()
        engine.step()
        times[arm.value].append(time.perf_counter() - start)
    set_backend(Backend.AUTO)
    for i in range(len(prompts)):
        engine.abort_request(f"a{i}")
    return {arm: 1000 * statistics.median(t) for arm, t in times.items()}


def greedy_tokens(llm: LLM, prompts: list[list[int]], backend: Backend) -> list[list[int]]:
    set_backend(backend)
    try:
        llm.engine.reset_prefix_cache()
        params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
        outputs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        set_backend(Backend.AUTO)
    return [list(o.outputs[0].token_ids) for o in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--name", default="cpu_attention")
    args = parser.parse_args()
    model = str(fetch_model("smollm2-135m-instruct"))
    llm = LLM(model, dtype="float32")
    spec = LLM(model, dtype="float32", speculative_config=NGRAM)
    tokenizer = llm.engine.tokenizer
    assert tokenizer is not None
    workload, _ = make_workload(tokenizer, 32, seed=0)
    corpus = [token for prompt in workload for token in prompt]

    def prompts(rows: int, ctx: int) -> list[list[int]]:
        return [corpus[i * 37 : i * 37 + ctx] for i in range(rows)]

    results: dict[str, dict[str, float]] = {}
    for rows, ctx in [(1, 300), (8, 300), (32, 300), (1, 1500), (8, 1500)]:
        results[f"decode_{rows}_ctx{ctx}"] = alternating_steps(
            llm.engine, prompts(rows, ctx), args.steps
        )
        print(f"decode {rows} x {ctx}: {results[f'decode_{rows}_ctx{ctx}']}")
    for rows in (1, 8):
        results[f"verify_{rows}"] = alternating_steps(
            spec.engine, extraction_prompts(tokenizer, rows), args.steps
        )
        print(f"verify {rows}: {results[f'verify_{rows}']}")
    speedup = {key: ms["torch"] / ms["auto"] for key, ms in results.items()}
    same = greedy_tokens(llm, prompts(8, 300), Backend.AUTO) == greedy_tokens(
        llm, prompts(8, 300), Backend.TORCH
    )
    result: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (fp32), default engine settings",
        "steps_per_arm": args.steps,
        "median_step_ms": results,
        "speedup_kernel_over_reference": speedup,
        "same_greedy_tokens": same,
    }
    path = write_result(args.name, result)
    print(", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()), "same tokens:", same, path)


if __name__ == "__main__":
    main()
