"""MKL-packed weights against plain ``F.linear`` on the CPU engine, same run, same prompts.

Two engines on SmolLM2-135M-Instruct in fp32, the default (``cpu_packed_weights=True``) and
``cpu_packed_weights=False``, alternating in rounds (the machine is shared and noisy):

- ``decode_rows_R``: ``R`` requests (prompts of ``engine_vs_hf``'s workload) are prefilled,
  then ``--decode-steps`` decode steps of ``R`` rows are timed: the median step, in ms;
- ``workload``: ``engine_vs_hf``'s workload of ``--num-prompts`` prompts end to end (prefill,
  decode, a shrinking batch), output tokens/s;
- ``spec_verify``: the n-gram speculative extraction prompts of ``benchmarks.spec_decode``
  at batch 1, output tokens/s (its verify steps run k + 1 rows per request).

Greedy outputs of the two engines are compared token for token on the workload.

    python -m benchmarks.cpu_packed_weights [--rounds 2] [--num-prompts 32]
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.common import parse_options, write_result
from benchmarks.engine_vs_hf import make_workload
from benchmarks.spec_decode import NGRAM, extraction_prompts
from engine import LLM, SamplingParams
from engine.llm_engine import LLMEngine
from engine.model_fetch import fetch_model
from engine.tokenizer import Tokenizer


def decode_step_ms(engine: LLMEngine, prompts: list[list[int]], steps: int) -> float:
    """Median time of ``steps`` decode steps with one row per prompt."""
    engine.reset_prefix_cache()
    params = SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"d{i}", prompt, params)
    while True:  # prefill until every request decodes
        engine.step()
        last = engine.stats.last_step
        if last is not None and last.is_decode and last.num_scheduled_requests == len(prompts):
            break
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    for i in range(len(prompts)):
        engine.abort_request(f"d{i}")
    return 1000 * statistics.median(times)


def workload_tokens_per_s(
    llm: LLM, prompts: list[list[int]], max_tokens: list[int]
) -> tuple[float, list[list[int]]]:
    llm.engine.reset_prefix_cache()
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in max_tokens]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    return sum(map(len, tokens)) / seconds, tokens


def spec_tokens_per_s(llm: LLM, prompts: list[list[int]], max_tokens: int) -> float:
    produced, seconds = 0, 0.0
    for prompt in prompts:  # batch 1
        llm.engine.reset_prefix_cache()
        start = time.perf_counter()
        out = llm.generate(
            [prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False
        )
        seconds += time.perf_counter() - start
        produced += len(out[0].outputs[0].token_ids)
    return produced / seconds


def main() -> None:
    args = parse_options(
        __doc__,
        rounds=2,
        num_prompts=32,
        decode_steps=12,
        spec_prompts=2,
        spec_max_tokens=128,
        seed=0,
    )
    model = str(fetch_model("smollm2-135m-instruct"))
    tokenizer = Tokenizer.from_pretrained(model)
    prompts, max_tokens = make_workload(tokenizer, args.num_prompts, args.seed)
    spec_prompts = extraction_prompts(tokenizer, args.spec_prompts)
    arms = {"packed": True, "f_linear": False}
    plain = {name: LLM(model, dtype="float32", cpu_packed_weights=on) for name, on in arms.items()}
    spec = {
        name: LLM(model, dtype="float32", cpu_packed_weights=on, speculative_config=NGRAM)
        for name, on in arms.items()
    }
    rows_list = [1, 8, 32]
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in arms}
    tokens: dict[str, list[list[int]]] = {}
    for round_index in range(args.rounds):
        for name in arms:
            row = runs[name]
            for rows in rows_list:
                ms = decode_step_ms(plain[name].engine, prompts[:rows], args.decode_steps)
                row.setdefault(f"decode_rows_{rows}_ms", []).append(ms)
            rate, tokens[name] = workload_tokens_per_s(plain[name], prompts, max_tokens)
            row.setdefault("workload_tokens_per_s", []).append(rate)
            rate = spec_tokens_per_s(spec[name], spec_prompts, args.spec_max_tokens)
            row.setdefault("spec_verify_batch1_tokens_per_s", []).append(rate)
            print(
                f"round {round_index} {name}: "
                + ", ".join(f"{k} {v[-1]:.1f}" for k, v in row.items())
            )
    medians = {
        name: {k: statistics.median(v) for k, v in row.items()} for name, row in runs.items()
    }
    speedup = {
        key: (
            medians["f_linear"][key] / medians["packed"][key]
            if key.endswith("_ms")
            else medians["packed"][key] / medians["f_linear"][key]
        )
        for key in medians["packed"]
    }
    result: dict[str, Any] = {
        "workload": {
            "model": "SmolLM2-135M-Instruct (fp32)",
            "num_prompts": len(prompts),
            "prompt_tokens": sum(map(len, prompts)),
            "decode_steps_timed": args.decode_steps,
            "spec": {
                "config": NGRAM,
                "prompts": len(spec_prompts),
                "max_tokens": args.spec_max_tokens,
            },
            "rounds": args.rounds,
        },
        "runs": runs,
        "medians": medians,
        "speedup_packed_over_f_linear": speedup,
        "same_greedy_tokens": tokens["packed"] == tokens["f_linear"],
    }
    path = write_result("cpu_packed_weights", result)
    print(", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()), "->", path)


if __name__ == "__main__":
    main()
