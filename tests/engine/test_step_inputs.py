"""The runner's persistent input buffers: padded decode batches (what a CUDA graph replays)
give the same logits as the unpadded step and write nothing for the padding rows."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.cuda_graphs import graph_batch_sizes
from engine.model_runner import ModelRunner
from engine.request import Request, RequestId
from engine.sampling_params import SamplingParams
from engine.scheduler_output import ScheduledRequest

BLOCK_SIZE = 4


def decode(name: str, token: int, position: int, blocks: list[int]) -> ScheduledRequest:
    request = Request(RequestId(name), [token], SamplingParams())
    return ScheduledRequest(request, [token], position, blocks, sample=True)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_padded_decode_step_matches_the_unpadded_one(
    kind: str, tiny_model_dirs: dict[str, Path]
) -> None:
    runner = ModelRunner(
        EngineConfig(
            model=str(tiny_model_dirs[kind]), device="cpu", block_size=BLOCK_SIZE, num_kv_blocks=64
        )
    )
    caches = runner.kv_caches
    generator = torch.Generator().manual_seed(0)
    for cache in caches:  # a cache already full of other requests' K/V
        cache.k_cache.normal_(generator=generator)
        cache.v_cache.normal_(generator=generator)
    step = [
        decode("a", 7, 9, [3, 11, 5]),
        decode("b", 8, 0, [20]),
        decode("c", 9, 14, [1, 2, 4, 6]),
    ]
    before = [c.k_cache.clone() for c in caches]
    plain = runner._forward_eager(runner.buffers.build(step), caches)
    after_plain = [c.k_cache.clone() for c in caches]
    for cache, k in zip(caches, before, strict=True):  # undo the step's K/V writes
        cache.k_cache.copy_(k)

    padded_inputs = runner.buffers.build(step, pad_to=8, max_seq_len=runner.max_model_len)
    assert padded_inputs.graph_size == 8 and padded_inputs.num_reqs == 3
    assert padded_inputs.input_ids.shape == (8,)
    assert padded_inputs.attn.block_table.shape == (8, runner.buffers.max_blocks_per_req)
    assert padded_inputs.attn.slot_mapping[3:].tolist() == [-1] * 5
    padded = runner._forward_eager(padded_inputs, caches)

    assert padded.shape == (8, plain.shape[1])
    torch.testing.assert_close(padded[:3], plain, atol=1e-5, rtol=1e-5)
    real_slots = [5 * BLOCK_SIZE + 1, 20 * BLOCK_SIZE + 0, 6 * BLOCK_SIZE + 2]
    others = torch.ones(64 * BLOCK_SIZE, dtype=torch.bool)
    others[real_slots] = False
    for cache, expected in zip(caches, after_plain, strict=True):
        got, want = cache.k_cache.flatten(0, 1), expected.flatten(0, 1)
        torch.testing.assert_close(got[real_slots], want[real_slots], atol=1e-5, rtol=1e-5)
        assert torch.equal(got[others], want[others]), "a padding row wrote to the cache"


def test_buffers_are_reused_across_steps_of_different_shapes(
    tiny_model_dirs: dict[str, Path],
) -> None:
    """A long prefill step, then a short decode step: stale entries of the first must not
    leak into the second (block table rows are cleared, counts come from the new step)."""
    runner = ModelRunner(
        EngineConfig(
            model=str(tiny_model_dirs["llama"]),
            device="cpu",
            block_size=BLOCK_SIZE,
            num_kv_blocks=64,
        )
    )
    prefill = [
        ScheduledRequest(
            Request(RequestId("p"), list(range(3, 23)), SamplingParams()),
            list(range(3, 23)),
            0,
            [9, 8, 7, 6, 5],
            sample=True,
        )
    ]
    first = runner.buffers.build(prefill)
    assert first.input_ids.shape == (20,)
    second = runner.buffers.build([decode("d", 4, 2, [1])])
    assert second.input_ids.tolist() == [4]
    assert second.positions.tolist() == [2]
    assert second.attn.block_table.tolist() == [[1]]
    assert second.attn.slot_mapping.tolist() == [1 * BLOCK_SIZE + 2]
    assert second.attn.query_start_loc.tolist() == [0, 1]
    assert second.attn.seq_lens.tolist() == [3]
    assert second.logits_indices.tolist() == [0]


def test_graph_batch_sizes_cover_every_batch_up_to_the_limit() -> None:
    assert graph_batch_sizes(256)[:6] == [1, 2, 4, 8, 16, 32]
    assert graph_batch_sizes(256)[-1] == 256
    assert graph_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert graph_batch_sizes(1) == [1]
    for limit in (1, 3, 16, 17, 100, 256):
        sizes = graph_batch_sizes(limit)
        assert sizes == sorted(set(sizes)) and sizes[-1] == limit
        # a batch pads at most 15 rows
        assert all(b - a <= 16 for a, b in itertools.pairwise(sizes))
