"""The speed limit a step of our engine cannot beat on a given device: bytes over bandwidth,
FLOPs over peak, both measured on that device in the same run.

A decode step must read every weight once and the whole KV context of every request in the
batch, and write the new tokens' K/V; nothing smaller moves that data, so
``bytes / bandwidth`` bounds its time from below. A prefill-heavy step is bounded by its matrix
FLOPs instead (``2 * matrix weights * tokens``, the output projection counted for sampled
tokens only, over the measured bf16 GEMM rate). A step's
roofline is the larger of the two; attention FLOPs are left out, which only lowers the bound
(for contexts of a few thousand tokens they are a few % of the GEMMs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner
from engine.outputs import RequestOutput
from engine.stats import StepStats, StepTimes


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    bandwidth_bytes_s: float  # device memory, counting bytes read plus bytes written
    matmul_flops_s: float  # dense GEMM in the model's dtype


@dataclass(frozen=True, slots=True)
class ModelTraffic:
    weight_bytes: int  # weights a forward pass reads in full (not the input embedding table)
    kv_bytes_per_token: int  # K and V of one position, all layers
    matmul_params: int  # weights that multiply every computed token (2 FLOPs each per token)
    logits_params: int  # the output projection, which multiplies only the sampled tokens

    @classmethod
    def of(cls, runner: ModelRunner) -> ModelTraffic:
        model = runner.model
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        embedding = model.model.embed_tokens.weight
        # Untied, the input table is only indexed (a few rows per step); tied, it is also the
        # output projection, read in full for the logits.
        gathered = 0 if model.lm_head is None else embedding.numel() * embedding.element_size()
        weight_bytes = total - gathered
        logits_params = embedding.numel()
        return cls(
            weight_bytes=weight_bytes,
            kv_bytes_per_token=runner.kv_block_bytes // runner.block_size,
            matmul_params=weight_bytes // embedding.element_size() - logits_params,
            logits_params=logits_params,
        )


@dataclass(frozen=True, slots=True)
class StepBound:
    memory_s: float
    compute_s: float

    @property
    def seconds(self) -> float:
        return max(self.memory_s, self.compute_s)


def step_bound(step: StepStats, traffic: ModelTraffic, limits: DeviceLimits) -> StepBound:
    """Read all weights, read each request's context, write the new tokens' K/V."""
    kv_bytes = traffic.kv_bytes_per_token * (step.num_context_tokens + step.num_batched_tokens)
    memory = (traffic.weight_bytes + kv_bytes) / limits.bandwidth_bytes_s
    flops = 2 * (
        traffic.matmul_params * step.num_batched_tokens + traffic.logits_params * step.num_sampled
    )
    compute = flops / limits.matmul_flops_s
    return StepBound(memory, compute)


def measure_limits(device: torch.device, dtype: torch.dtype) -> DeviceLimits:
    return DeviceLimits(measure_bandwidth(device), measure_matmul_flops(device, dtype))


def measure_bandwidth(device: torch.device, num_bytes: int = 2**31, repeats: int = 20) -> float:
    """A device-to-device copy of ``num_bytes``: (bytes read + bytes written) per second, the
    best of ``repeats`` (the bound we compare against should be what the device can do)."""
    if device.type != "cuda":
        num_bytes = min(num_bytes, 2**28)
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src), device) for _ in range(repeats))
    return 2 * num_bytes / best


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """A square GEMM on random data (8192 on CUDA), best of ``repeats``."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def summarize_steps(
    all_steps: list[StepStats], traffic: ModelTraffic, limits: DeviceLimits
) -> dict[str, Any]:
    """Roofline and phase times, over all steps and over the decode steps alone."""
    summary: dict[str, Any] = {}
    for label, steps in (
        ("all_steps", all_steps),
        ("decode_steps", [s for s in all_steps if s.is_decode]),
    ):
        times = StepTimes()
        bound_s = memory_s = 0.0
        for step in steps:
            times.add(step.times)
            bound = step_bound(step, traffic, limits)
            bound_s += bound.seconds
            memory_s += bound.memory_s
        measured = times.total_s
        phases = asdict(times)
        tokens = sum(s.num_sampled for s in steps)
        summary[label] = {
            "num_steps": len(steps),
            "num_cuda_graph_steps": sum(s.used_cuda_graph for s in steps),
            "output_tokens": tokens,
            "seconds": measured,
            "roofline_s": bound_s,
            "memory_bound_s": memory_s,
            "achieved_fraction": bound_s / measured if measured else 0.0,
            "roofline_tokens_per_s": tokens / bound_s if bound_s else 0.0,
            "phase_s": phases,
            "phase_fraction": {
                name: seconds / measured if measured else 0.0 for name, seconds in phases.items()
            },
            "mean_batch": tokens / len(steps) if steps else 0.0,
        }
    return summary


def drain(engine: LLMEngine) -> tuple[int, list[StepStats]]:
    """Step ``engine`` until its requests are done: the tokens they produced and the stats of
    every step that ran (what ``summarize_steps`` reads)."""
    steps: list[StepStats] = []
    produced = 0
    while engine.has_unfinished_requests():
        num_steps = engine.stats.num_steps
        for output in engine.step():
            assert isinstance(output, RequestOutput)
            produced += len(output.outputs[0].token_ids)
        if engine.stats.num_steps > num_steps:
            assert engine.stats.last_step is not None
            steps.append(engine.stats.last_step)
    return produced, steps
