"""Multi-LoRA cost: one batch spread over 8 adapters against the same batch on the base model.

One engine (``enable_lora=True, max_loras=8``) runs the same prompts twice per round: every
prompt on the base model, and prompt ``i`` under adapter ``i % 8`` (eight seeded random rank-16
PEFT adapters on every q/k/v/o/gate/up/down projection). The arms alternate, their order
flipping each round, and the prefix cache is reset before each. Target: the mixed batch keeps
>= 0.7 of the base batch's output tokens/s on the CPU.

A last, separate run of the mixed batch times every LoRA shrink and expand call (the CPU runs
them synchronously) against the engine's busy time: the LoRA kernels' share of step time.

    python -m benchmarks.lora_mix --rounds 3 --threads 1   (--threads 0: torch's default)
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import engine.models.lora as lora_layers
from benchmarks.common import parse_options, write_result
from engine import LLM, LoRARequest, SamplingParams
from engine.model_fetch import fetch_model
from engine.models.model_config import ModelConfig
from engine.tokenizer import Tokenizer
from infra.harness.workloads import CORPUS

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
NUM_ADAPTERS = 8
RANK = 16


def write_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A PEFT-format adapter of rank ``RANK`` on every projection, seeded random A and B."""
    c = ModelConfig.from_pretrained(model_dir)
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes = {
        "self_attn.q_proj": (c.hidden_size, q),
        "self_attn.k_proj": (c.hidden_size, kv),
        "self_attn.v_proj": (c.hidden_size, kv),
        "self_attn.o_proj": (q, c.hidden_size),
        "mlp.gate_proj": (c.hidden_size, c.intermediate_size),
        "mlp.up_proj": (c.hidden_size, c.intermediate_size),
        "mlp.down_proj": (c.intermediate_size, c.hidden_size),
    }
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(c.num_layers):
        for module, (fan_in, fan_out) in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            a = torch.randn(RANK, fan_in, generator=generator) * 0.02
            tensors[f"{prefix}.lora_A.weight"] = a
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(fan_out, RANK, generator=generator) * 0.02
            )
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": 2 * RANK,
        "target_modules": [m.split(".")[1] for m in shapes],
        "base_model_name_or_path": str(model_dir),
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def prompts_for(model_dir: Path, count: int, length: int) -> list[list[int]]:
    ids = Tokenizer.from_pretrained(str(model_dir)).encode(CORPUS * 4, add_special_tokens=False)
    return [ids[(i * 53) % (len(ids) - length) :][:length] for i in range(count)]


def run_arm(
    llm: LLM, prompts: list[list[int]], loras: list[LoRARequest | None], max_tokens: int
) -> dict[str, float]:
    llm.engine.reset_prefix_cache()
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    busy = llm.engine.stats.busy_time_s
    cpu, start = time.process_time(), time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=loras)
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "tokens_per_cpu_s": tokens / cpu_s,
        "busy_s": llm.engine.stats.busy_time_s - busy,
    }


def timed(fn: Callable[..., Any], totals: dict[str, float], name: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start

    return wrapper


def lora_share(
    llm: LLM, prompts: list[list[int]], loras: list[LoRARequest | None], max_tokens: int
) -> dict[str, float]:
    """Seconds in the LoRA shrink and expand calls over the engine's busy seconds."""
    totals = {"shrink": 0.0, "expand": 0.0}
    shrink, expand = lora_layers.lora_shrink, lora_layers.lora_expand
    lora_layers.lora_shrink = timed(shrink, totals, "shrink")  # type: ignore[assignment]
    lora_layers.lora_expand = timed(expand, totals, "expand")  # type: ignore[assignment]
    try:
        run = run_arm(llm, prompts, loras, max_tokens)
    finally:
        lora_layers.lora_shrink, lora_layers.lora_expand = shrink, expand  # type: ignore[assignment]
    lora_s = totals["shrink"] + totals["expand"]
    return {
        "shrink_s": totals["shrink"],
        "expand_s": totals["expand"],
        "busy_s": run["busy_s"],
        "lora_share_of_step_time": lora_s / run["busy_s"],
    }


def main() -> None:
    args = parse_options(
        __doc__,
        model="smollm2-135m-instruct",
        prompts=64,
        prompt_len=128,
        max_tokens=32,
        rounds=3,
        name="lora_mix_cpu",
        threads=0,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = fetch_model(args.model, MODELS_DIR)
    with tempfile.TemporaryDirectory(prefix="lora-mix-") as tmp:
        adapters = [
            LoRARequest(f"adapter-{i}", i + 1, str(write_adapter(model_dir, Path(tmp) / str(i), i)))
            for i in range(NUM_ADAPTERS)
        ]
        llm = LLM(str(model_dir), enable_lora=True, max_loras=NUM_ADAPTERS, max_lora_rank=RANK)
        prompts = prompts_for(model_dir, args.prompts, args.prompt_len)
        arms: dict[str, list[LoRARequest | None]] = {
            "base": [None] * len(prompts),
            "mixed": [adapters[i % NUM_ADAPTERS] for i in range(len(prompts))],
        }
        run_arm(llm, prompts[:8], arms["mixed"][:8], 4)  # warm-up: registers every adapter
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
        for r in range(args.rounds):
            for name in arms if r % 2 == 0 else reversed(list(arms)):
                run = run_arm(llm, prompts, arms[name], args.max_tokens)
                runs[name].append(run)
                print(f"round {r} {name:>5}: {run['tokens_per_s']:7.1f} tok/s")
        share = lora_share(llm, prompts, arms["mixed"], args.max_tokens)
    ratios = [
        m["tokens_per_s"] / b["tokens_per_s"]
        for m, b in zip(runs["mixed"], runs["base"], strict=True)
    ]
    cpu_ratios = [
        m["tokens_per_cpu_s"] / b["tokens_per_cpu_s"]
        for m, b in zip(runs["mixed"], runs["base"], strict=True)
    ]
    result = {
        "model": args.model,
        "num_adapters": NUM_ADAPTERS,
        "rank": RANK,
        "prompts": args.prompts,
        "prompt_len": args.prompt_len,
        "max_tokens": args.max_tokens,
        "rounds": runs,
        "ratio_per_round": ratios,
        "cpu_ratio_per_round": cpu_ratios,
        "median_ratio": statistics.median(ratios),
        "median_cpu_ratio": statistics.median(cpu_ratios),
        "target_ratio": 0.7,
        "lora_kernels": share,
    }
    path = write_result(args.name, result)
    print(f"mixed/base tokens/s: median {result['median_ratio']:.3f} (rounds {ratios})")
    print(f"mixed/base tokens per CPU second: median {result['median_cpu_ratio']:.3f}")
    print(f"LoRA kernels: {share['lora_share_of_step_time']:.1%} of step time -> {path}")


if __name__ == "__main__":
    main()
