"""The Triton paged-attention kernel against ``paged_attention_reference``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from infra.harness.paged_batch import make_batch
from kernels.attention import PagedAttentionInputs, paged_attention_reference
from kernels.attention_triton import paged_attention_triton
from tests.kernels.common import DTYPES, assert_close

# One step of continuous batching: a fresh prefill, decodes (one with a single-token context),
# prefix-cached chunks whose queries are shorter than their contexts.
MIXED_Q_LENS = [5, 1, 17, 1, 3, 1]
MIXED_SEQ_LENS = [5, 40, 50, 1, 19, 70]

HEADS = [(4, 4), (4, 2), (8, 2), (4, 1)]  # GQA ratios 1, 2, 4 and MQA
HEAD_AND_BLOCK_SIZES = [(16, 16), (32, 32), (64, 16), (128, 32)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), HEADS)
@pytest.mark.parametrize(("head_size", "block_size"), HEAD_AND_BLOCK_SIZES)
def test_mixed_prefill_and_decode(
    device: torch.device,
    dtype: torch.dtype,
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
) -> None:
    batch = make_batch(
        MIXED_Q_LENS,
        MIXED_SEQ_LENS,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        block_size=block_size,
        dtype=dtype,
        device=device,
    )
    assert_close(paged_attention_triton(batch), paged_attention_reference(batch))


@pytest.mark.parametrize(
    ("q_lens", "seq_lens"),
    [
        ([1] * 7, [1, 2, 31, 32, 33, 100, 130]),  # decodes around tile and block edges
        ([64], [64]),  # one long prefill: several query tiles
        ([40, 9], [200, 9]),  # a chunk on top of a long cached prefix, beside a prefill
    ],
)
def test_batch_shapes(device: torch.device, q_lens: list[int], seq_lens: list[int]) -> None:
    batch = make_batch(
        q_lens,
        seq_lens,
        num_heads=8,
        head_size=64,
        dtype=torch.float16,
        device=device,
    )
    assert_close(paged_attention_triton(batch), paged_attention_reference(batch))


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(6, 2), (12, 2), (14, 2)])
def test_group_sizes_that_are_not_powers_of_two(
    device: torch.device, num_heads: int, num_kv_heads: int
) -> None:
    """Qwen2-style head counts: a tile holds whole groups, its spare rows stay masked."""
    batch = make_batch(
        [9, 1, 2],
        [30, 45, 2],
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_size=32,
        device=device,
    )
    assert_close(paged_attention_triton(batch), paged_attention_reference(batch))


@pytest.mark.parametrize("block_size", [48, 64])
def test_block_size_other_than_the_key_tile(device: torch.device, block_size: int) -> None:
    batch = make_batch(
        [3, 1],
        [100, 77],
        head_size=32,
        block_size=block_size,
        device=device,
    )
    assert_close(paged_attention_triton(batch), paged_attention_reference(batch))


def test_strided_query_from_a_fused_projection(device: torch.device) -> None:
    """The query may be a view into a fused qkv output: rows are strided, heads are not."""
    batch = make_batch(
        [4, 1],
        [4, 20],
        head_size=32,
        device=device,
    )
    qkv = torch.randn(5, 8 * 32, device=device)
    batch.query = qkv[:, : 4 * 32].view(5, 4, 32)
    assert not batch.query.is_contiguous()
    assert_close(paged_attention_triton(batch), paged_attention_reference(batch))


def test_block_ids_past_int32_element_offsets(device: torch.device) -> None:
    """Blocks at ids whose element offset ``id * block_stride`` exceeds 2**31.

    The cache spans 2**31 fp16 elements (4 GiB); on the CPU ``torch.empty`` only reserves the
    address space and the few blocks the batch writes are all that become resident.
    """
    block_size, num_kv_heads, head_size = 16, 2, 64
    first_block = 2**31 // (block_size * num_kv_heads * head_size)
    try:
        batch = make_batch(
            [3, 1, 1],
            [40, 33, 70],
            num_kv_heads=num_kv_heads,
            head_size=head_size,
            block_size=block_size,
            dtype=torch.float16,
            device=device,
            first_block=first_block,
        )
    except (RuntimeError, MemoryError) as exc:
        pytest.skip(f"cannot reserve a 4 GiB cache here: {exc}")
    assert batch.k_cache.numel() > 2**31
    assert int(batch.block_table.min()) >= first_block
    assert_close(paged_attention_triton(batch), paged_attention_reference(batch))


def _small_batch(device: torch.device) -> PagedAttentionInputs:
    return make_batch(
        [2, 1],
        [2, 9],
        device=device,
    )


def test_rejects_bad_inputs(device: torch.device) -> None:
    batch = _small_batch(device)
    broken = [
        replace(batch, query=batch.query.to(torch.float16)),  # dtype differs from the caches
        replace(batch, k_cache=batch.k_cache[..., :8]),  # head size differs from the query
        replace(batch, block_table=batch.block_table.float()),  # non-integer block table
        replace(batch, query_start_loc=batch.query_start_loc[:-1]),  # wrong length
    ]
    for bad in broken:
        with pytest.raises(ValueError):
            paged_attention_triton(bad)
    odd_heads = batch.query[:, :3]  # 3 query heads over 2 KV heads
    with pytest.raises(ValueError, match="multiple"):
        paged_attention_triton(replace(batch, query=odd_heads))


def _step_kv(batch: PagedAttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's new K/V, as ``store_kv_cache`` wrote them: read back through the tables."""
    block_size = batch.k_cache.shape[1]
    slots = []
    starts, lens = batch.query_start_loc.tolist(), batch.seq_lens.tolist()
    for r, ctx in enumerate(lens):
        q_len = starts[r + 1] - starts[r]
        for pos in range(ctx - q_len, ctx):
            slots.append(
                int(batch.block_table[r, pos // block_size]) * block_size + pos % block_size
            )
    index = torch.tensor(slots, device=batch.query.device)
    flat = (c.view(-1, *c.shape[2:]) for c in (batch.k_cache, batch.v_cache))
    key, value = (c[index] for c in flat)
    return key, value


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), HEADS)
def test_fresh_prefills_may_attend_to_the_steps_own_kv(
    device: torch.device, num_heads: int, num_kv_heads: int
) -> None:
    """The reference's shortcut for chunks with no cached context (causal SDPA on the step's
    K/V) gives what reading the cache gives, beside decodes and prefix-cached chunks."""
    batch = make_batch(
        MIXED_Q_LENS,
        MIXED_SEQ_LENS,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_size=32,
        block_size=16,
        dtype=torch.float32,
        device=device,
    )
    key, value = _step_kv(batch)
    shortcut = paged_attention_reference(batch, key=key, value=value)
    assert_close(shortcut, paged_attention_reference(batch))
