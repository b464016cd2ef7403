"""The engine on the CPU against llama.cpp, same prompts, same greedy decoding, same threads.

The workload is ``engine_vs_hf``'s (SmolLM2-135M-Instruct, mixed prompt lengths, per-prompt
``max_tokens``), with ``ignore_eos`` on both sides so that both generate exactly the same
number of tokens. llama.cpp (``llama-cpp-python``, the ``bench`` extra) runs F32 and F16 GGUF
files of the very weights the engine loads (``benchmarks.gguf_export``), batched the way its
server batches (``benchmarks.llamacpp_batched``); F32 runs with an F32 KV cache like the
engine, F16 with llama.cpp's default F16 cache. The runs alternate (engine, llama.cpp F32,
llama.cpp F16, repeated ``--rounds`` times) so that a neighbour's load hits all of them alike;
each side's best round is reported, with the ratio of output tokens/s, and how many greedy
tokens llama.cpp F32 agrees with the engine on.

    pip install -e ".[bench]"   # with CMAKE_ARGS="-DGGML_NATIVE=ON"
    python -m benchmarks.cpu_vs_llamacpp [--num-prompts 64] [--threads N] [--rounds 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_result
from benchmarks.cpu_roofline import cpu_flags
from benchmarks.engine_vs_hf import make_workload
from benchmarks.gguf_export import export_gguf
from benchmarks.llamacpp_batched import run_batched
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_fetch import extract_gguf, fetch_model
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

MODEL = "smollm2-135m-instruct"


def run_engine(
    engine: LLMEngine, prompts: list[list[int]], max_tokens: list[int]
) -> tuple[float, list[list[int]]]:
    engine.reset_prefix_cache()
    for i, (prompt, limit) in enumerate(zip(prompts, max_tokens, strict=True)):
        params = SamplingParams(temperature=0.0, max_tokens=limit, ignore_eos=True)
        engine.add_request(i, prompt, params)
    outputs: dict[int, list[int]] = {}
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        for output in engine.step():
            assert isinstance(output, RequestOutput)
            assert isinstance(output.request_id, int)
            outputs[output.request_id] = list(output.outputs[0].token_ids)
    return time.perf_counter() - start, [outputs[i] for i in range(len(prompts))]


def agreeing_prefix(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of tokens generated before the two runs' greedy choices first differ."""
    same = 0
    for x, y in zip(a, b, strict=True):
        for s, t in zip(x, y, strict=False):
            if s != t:
                break
            same += 1
    return same / max(1, sum(len(x) for x in a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--name", default="cpu_vs_llamacpp")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    model_dir = fetch_model(MODEL)
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", device="cpu"))
    assert engine.tokenizer is not None
    prompts, max_tokens = make_workload(engine.tokenizer, args.num_prompts, args.seed)
    run_engine(engine, prompts[:2], [4, 4])  # warm-up
    with tempfile.TemporaryDirectory(prefix="kvbatch-gguf-") as tmp:
        source = extract_gguf(MODEL, Path(tmp))
        ggufs = {p: export_gguf(source, Path(tmp) / f"{MODEL}-{p}.gguf", p) for p in ("f32", "f16")}
        best: dict[str, float] = {}
        outputs: dict[str, list[list[int]]] = {}
        for _ in range(args.rounds):
            seconds, outputs["engine"] = run_engine(engine, prompts, max_tokens)
            best["engine"] = min(best.get("engine", float("inf")), seconds)
            for precision, path in ggufs.items():
                run = run_batched(
                    path,
                    prompts,
                    max_tokens,
                    threads=threads,
                    kv_f32=precision == "f32",
                    ignore_eos=True,
                )
                key = f"llamacpp_{precision}"
                best[key] = min(best.get(key, float("inf")), run.seconds)
                outputs[key] = run.outputs
    num_tokens = sum(max_tokens)
    assert all(sum(len(o) for o in out) == num_tokens for out in outputs.values())
    runs: dict[str, Any] = {
        name: {"seconds": s, "output_tokens": num_tokens, "tokens_per_s": num_tokens / s}
        for name, s in best.items()
    }
    engine_tps = runs["engine"]["tokens_per_s"]
    result = {
        "workload": {
            "model": "SmolLM2-135M-Instruct",
            "num_prompts": len(prompts),
            "prompt_tokens": sum(len(p) for p in prompts),
            "output_tokens": num_tokens,
            "sampling": "greedy, ignore_eos",
        },
        "threads": threads,
        "rounds": args.rounds,
        "cpu_flags": cpu_flags(),
        "runs": runs,
        "ratio_engine_fp32_over_llamacpp_f32": engine_tps / runs["llamacpp_f32"]["tokens_per_s"],
        "ratio_engine_fp32_over_llamacpp_f16": engine_tps / runs["llamacpp_f16"]["tokens_per_s"],
        "greedy_agreement_with_engine": {
            key: agreeing_prefix(outputs["engine"], outputs[key])
            for key in ("llamacpp_f32", "llamacpp_f16")
        },
        "llamacpp_mode": "continuous batching over llama_decode (unified KV cache), see "
        "benchmarks/llamacpp_batched.py",
    }
    path = write_result(args.name, result)
    for name, run in runs.items():
        print(f"{name}: {run['tokens_per_s']:.1f} tok/s ({run['seconds']:.1f} s)")
    print(
        f"engine/llama.cpp F32 {result['ratio_engine_fp32_over_llamacpp_f32']:.2f}x, "
        f"engine/llama.cpp F16 {result['ratio_engine_fp32_over_llamacpp_f16']:.2f}x -> {path}"
    )


if __name__ == "__main__":
    main()
