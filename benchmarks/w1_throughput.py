"""Workload W1: offline throughput of the engine against its roofline and transformers.

W1 is nano-vllm's benchmark: 256 sequences, prompt and output lengths uniform in 100..1024,
random token ids below 10,000, ``ignore_eos``, temperature 0.6, all submitted at once. The
generator is Python's ``random`` seeded with 0 and called in nano-vllm's order, so the prompts
are the same as theirs. Weights are random, built on the device from a ``config.json`` alone
(``load_format="dummy"``): speed depends on the shape, not the values.

Reported, all from one run on one device:

- output tokens/s: sum of ``max_tokens`` over the wall time from submitting to the last output;
- the roofline (``benchmarks.roofline``): per step, weights + KV bytes over the measured
  bandwidth, or GEMM FLOPs over the measured GEMM rate if larger, summed over the steps the
  engine ran, and the achieved fraction; also for the decode steps alone;
- where the step time went (schedule, prepare, forward, sample, postprocess);
- transformers ``generate`` on the first ``--hf-seqs`` sequences (one left-padded batch each
  ``--hf-batch``, sampling at the same temperature, generating each batch's longest
  ``max_tokens`` and counting only each sequence's own), and our engine on that same subset,
  so the ratio compares like with like.

    python -m benchmarks.w1_throughput --model llama-3.1-8b [--hf-seqs 64]

``--model`` names a folder of ``benchmarks/model_configs`` or any model directory. The result
goes to ``benchmarks/results/w1_<model>_<gpu>.json`` (``--name`` overrides).
"""

from __future__ import annotations

import argparse
import gc
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, write_result
from benchmarks.roofline import ModelTraffic, drain, measure_limits, summarize_steps
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.models.model_config import ModelConfig
from engine.sampling_params import SamplingParams
from engine.stats import StepStats
from infra.engine_args import add_engine_arguments, engine_args
from infra.harness.workloads import Workload, make_w1

MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
# Engine flags of this benchmark (``--no-sync-step-timing`` included) and its own defaults.
W1_ENGINE_FIELDS = (
    "dtype",
    "device",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "kv_cache_memory_gb",
    "enforce_eager",
    "sync_step_timing",
)
W1_ENGINE_DEFAULTS = {"max_num_batched_tokens": 16384, "kv_cache_memory_gb": 4.0}


@dataclass(slots=True)
class EngineRun:
    seconds: float
    output_tokens: int
    steps: list[StepStats]

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def run_engine(engine: LLMEngine, workload: Workload) -> EngineRun:
    """Submit everything, step until done; keep every step's stats. The prefix cache starts
    empty, so no run reuses an earlier run's prompts."""
    engine.reset_prefix_cache()
    start = time.perf_counter()
    for i, (prompt, max_tokens) in enumerate(
        zip(workload.prompts, workload.max_tokens, strict=True)
    ):
        params = SamplingParams(
            temperature=workload.temperature, max_tokens=max_tokens, ignore_eos=True
        )
        engine.add_request(f"w1-{i}", prompt, params)
    produced, steps = drain(engine)
    seconds = time.perf_counter() - start
    assert produced == workload.num_output_tokens, (produced, workload.num_output_tokens)
    return EngineRun(seconds, produced, steps)


def warm_up(engine: LLMEngine, max_len: int) -> None:
    """Compile the Triton kernels for prefill and decode shapes before the clock starts."""
    rng = random.Random(1)
    for i, length in enumerate([max_len, max_len // 2, 17, 3]):
        prompt = [rng.randint(0, 100) for _ in range(length)]
        engine.add_request(f"warm-{i}", prompt, SamplingParams(max_tokens=20, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()


def run_transformers(
    model_dir: Path, workload: Workload, batch_size: int, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """transformers ``generate`` on a model of the same config with its own random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device(device):
        model: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    pad = 0
    seconds = 0.0
    generated = 0
    for start in range(0, len(workload.prompts), batch_size):
        prompts = workload.prompts[start : start + batch_size]
        wanted = workload.max_tokens[start : start + batch_size]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        _sync(device)
        began = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask.to(device),
                do_sample=True,
                temperature=workload.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max(wanted),
                min_new_tokens=max(wanted),  # ignore_eos
                pad_token_id=pad,
            )
        _sync(device)
        seconds += time.perf_counter() - began
        assert out.shape[1] == width + max(wanted)
        generated += out.shape[0] * max(wanted)
    del model
    _free(device)
    useful = workload.num_output_tokens
    return {
        "num_seqs": len(workload.prompts),
        "batch_size": batch_size,
        "seconds": seconds,
        "output_tokens": useful,
        "generated_tokens_incl_past_max_tokens": generated,
        "tokens_per_s": useful / seconds,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def resolve_model(name: str) -> Path:
    path = MODEL_CONFIGS / name
    return path if path.is_dir() else Path(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--min-len", type=int, default=100)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--max-num-seqs", type=int, default=None, help="default: --num-seqs")
    add_engine_arguments(parser, W1_ENGINE_FIELDS, W1_ENGINE_DEFAULTS)
    parser.add_argument("--hf-seqs", type=int, default=64, help="0 skips transformers")
    parser.add_argument("--hf-batch", type=int, default=None, help="default: --hf-seqs")
    parser.add_argument("--name", default=None)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    model_dir = resolve_model(args.model)
    config = EngineConfig(
        model=str(model_dir),
        load_format="dummy",
        max_model_len=2 * args.max_len,
        max_num_seqs=args.max_num_seqs or args.num_seqs,
        **engine_args(args, W1_ENGINE_FIELDS),
    )
    device, dtype = config.torch_device, config.torch_dtype
    vocab = ModelConfig.from_pretrained(model_dir).vocab_size
    workload = make_w1(args.num_seqs, args.min_len, args.max_len, min(10000, vocab - 1))
    limits = measure_limits(device, dtype)
    print(
        f"device: {limits.bandwidth_bytes_s / 1e12:.2f} TB/s copy, "
        f"{limits.matmul_flops_s / 1e12:.0f} TFLOP/s GEMM"
    )

    transformers_result = None
    subset = workload.head(args.hf_seqs) if args.hf_seqs else None
    if subset is not None:  # first, while the engine does not hold the memory
        transformers_result = run_transformers(
            model_dir, subset, args.hf_batch or args.hf_seqs, device, dtype
        )
        print(
            f"transformers on {args.hf_seqs} seqs: {transformers_result['tokens_per_s']:.0f} tok/s"
        )

    began = time.perf_counter()
    engine = LLMEngine(config)
    load_s = time.perf_counter() - began
    warm_up(engine, args.max_len)
    traffic = ModelTraffic.of(engine.runner)
    run = run_engine(engine, workload)
    print(
        f"engine on W1: {run.tokens_per_s:.0f} tok/s ({run.output_tokens} in {run.seconds:.2f} s)"
    )
    subset_run = run_engine(engine, subset) if subset is not None else None
    summary = summarize_steps(run.steps, traffic, limits)
    roofline_tok_s = run.output_tokens / summary["all_steps"]["roofline_s"]

    result: dict[str, Any] = {
        "model": args.model,
        "workload": {
            "num_seqs": args.num_seqs,
            "lengths": [args.min_len, args.max_len],
            "prompt_tokens": sum(len(p) for p in workload.prompts),
            "output_tokens": workload.num_output_tokens,
            "temperature": workload.temperature,
        },
        "engine_config": {k: v for k, v in asdict(config).items() if k not in ("model", "seed")},
        "versions": _versions(),
        "device_limits": {
            "bandwidth_TB_s": limits.bandwidth_bytes_s / 1e12,
            "matmul_TFLOP_s": limits.matmul_flops_s / 1e12,
        },
        "model_traffic": asdict(traffic),
        "num_kv_blocks": engine.runner.num_kv_blocks,
        "engine_load_s": load_s,
        "engine": {
            "seconds": run.seconds,
            "output_tokens": run.output_tokens,
            "tokens_per_s": run.tokens_per_s,
            "num_preemptions": engine.stats.num_preemptions,
        },
        "roofline_tokens_per_s": roofline_tok_s,
        "achieved_fraction_of_roofline": run.tokens_per_s / roofline_tok_s,
        "steps": summary,
    }
    if transformers_result is not None and subset_run is not None:
        result["transformers"] = transformers_result
        result["engine_on_transformers_subset"] = {
            "seconds": subset_run.seconds,
            "tokens_per_s": subset_run.tokens_per_s,
        }
        result["speedup_vs_transformers_same_subset"] = (
            subset_run.tokens_per_s / transformers_result["tokens_per_s"]
        )
        result["speedup_vs_transformers_w1"] = (
            run.tokens_per_s / transformers_result["tokens_per_s"]
        )
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    name = args.name or f"w1_{args.model}_{_slug(gpu)}"
    path = write_result(name, result, args.results_dir)
    _print(result)
    print(f"wrote {path}")


def _versions() -> dict[str, str]:
    import transformers
    import triton

    return {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "cuda": str(torch.version.cuda),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _print(result: dict[str, Any]) -> None:
    engine = result["engine"]
    print(
        f"W1 {result['model']}: {engine['tokens_per_s']:.0f} tok/s, roofline "
        f"{result['roofline_tokens_per_s']:.0f} tok/s "
        f"({100 * result['achieved_fraction_of_roofline']:.1f} %)"
    )
    for label, data in result["steps"].items():
        phases = ", ".join(f"{k[:-2]} {100 * v:.1f}%" for k, v in data["phase_fraction"].items())
        print(
            f"  {label}: {data['num_steps']} steps ({data['num_cuda_graph_steps']} graphed), "
            f"{data['seconds']:.2f} s vs roofline {data['roofline_s']:.2f} s "
            f"({100 * data['achieved_fraction']:.1f} %); {phases}"
        )
    if "transformers" in result:
        print(
            f"  transformers: {result['transformers']['tokens_per_s']:.0f} tok/s on "
            f"{result['transformers']['num_seqs']} seqs; engine on the same: "
            f"{result['engine_on_transformers_subset']['tokens_per_s']:.0f} tok/s "
            f"({result['speedup_vs_transformers_same_subset']:.1f}x)"
        )


if __name__ == "__main__":
    main()
