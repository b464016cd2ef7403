"""CUDA graphs for decode steps (GPU only): the same tokens as eager execution, and graphs
replayed for every pure decode step whose batch fits the largest graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.request import Request, RequestId
from engine.scheduler_output import ScheduledRequest, SchedulerOutput

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _llm(model_dir: Path, enforce_eager: bool) -> LLM:
    return LLM(
        str(model_dir),
        device="cuda",
        dtype="float32",
        num_kv_blocks=256,
        block_size=16,
        max_num_seqs=12,
        max_num_batched_tokens=64,
        enforce_eager=enforce_eager,
    )


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_graphs_generate_the_same_tokens_as_eager(
    kind: str, tiny_model_dirs: dict[str, Path]
) -> None:
    gen = torch.Generator().manual_seed(0)
    # 11 prompts: batch sizes 11 (padded to 12), then fewer as the short requests finish
    # (padded to 8, 4, 2, 1); the long prompt is chunked so early steps mix prefill and decode.
    lengths = [3, 90, 7, 1, 20, 33, 5, 8, 60, 2, 15]
    prompts = [torch.randint(3, 500, (n,), generator=gen).tolist() for n in lengths]
    params = [
        SamplingParams(temperature=0.0, max_tokens=4 + 3 * i, ignore_eos=True)
        for i in range(len(prompts))
    ]
    outputs = {}
    stats = {}
    for eager in (True, False):
        llm = _llm(tiny_model_dirs[kind], eager)
        results = llm.generate(prompts, params, use_tqdm=False)
        outputs[eager] = [list(r.outputs[0].token_ids) for r in results]
        stats[eager] = llm.engine.stats
    assert outputs[False] == outputs[True]
    assert stats[True].num_cuda_graph_steps == 0
    graph_stats = stats[False]
    assert graph_stats.num_steps == len(graph_stats.recent)  # all steps kept
    for step in graph_stats.recent:  # a graph for exactly the pure decode steps
        assert step.used_cuda_graph == step.is_decode
    assert graph_stats.num_cuda_graph_steps > 20


def test_graph_logits_match_eager_logits(tiny_model_dirs: dict[str, Path]) -> None:
    runner = ModelRunner(
        EngineConfig(
            model=str(tiny_model_dirs["llama"]),
            device="cuda",
            dtype="float32",
            num_kv_blocks=64,
            block_size=4,
            max_num_seqs=8,
        )
    )
    assert runner.graphs is not None
    caches = runner.kv_caches
    for cache in caches:
        cache.k_cache.normal_()
        cache.v_cache.normal_()
    step = []
    for i, (position, blocks) in enumerate([(9, [3, 11, 5]), (0, [20]), (14, [1, 2, 4, 6])]):
        request = Request(RequestId(f"r{i}"), [7 + i], SamplingParams())
        step.append(ScheduledRequest(request, [7 + i], position, blocks, sample=True))
    eager = runner._forward_eager(runner.buffers.build(step), caches).clone()
    inputs = runner.prepare(SchedulerOutput(step))
    assert inputs.graph_size == 4
    graphed = runner.forward(inputs)
    torch.testing.assert_close(graphed, eager, atol=1e-4, rtol=1e-4)
