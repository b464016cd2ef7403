"""Random paged-attention batches (shuffled block tables over a cache with spare blocks), for
the kernel tests and the attention benchmark alike."""

from __future__ import annotations

import torch

from kernels.attention import PagedAttentionInputs


def make_batch(
    q_lens: list[int],
    seq_lens: list[int],
    *,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_size: int = 16,
    block_size: int = 16,
    dtype: torch.dtype = torch.float32,
    device: torch.device,
    first_block: int = 0,
) -> PagedAttentionInputs:
    """Requests get random distinct blocks from ``[first_block, first_block + needed + 8)``.

    Blocks below ``first_block`` are allocated but never written or read, which puts the used
    blocks at high indices without paying memory for the rest (``torch.empty`` is lazy on CPU).
    """
    assert all(0 < q <= s for q, s in zip(q_lens, seq_lens, strict=True))
    blocks_per_req = [-(-s // block_size) for s in seq_lens]
    needed = sum(blocks_per_req)
    num_blocks = first_block + needed + 8
    shape = (num_blocks, block_size, num_kv_heads, head_size)
    k_cache = torch.empty(shape, dtype=dtype, device=device)
    v_cache = torch.empty(shape, dtype=dtype, device=device)
    k_cache[first_block:] = 0
    v_cache[first_block:] = 0
    ids = torch.randperm(needed + 8, device=device)[:needed] + first_block
    k_cache[ids] = torch.randn(needed, *shape[1:], device=device).to(dtype)
    v_cache[ids] = torch.randn(needed, *shape[1:], device=device).to(dtype)
    # Padding entries name a written block: the reference gathers them (then masks them out),
    # and a NaN in never-written memory would survive its zero attention weight.
    block_table = torch.full(
        (len(q_lens), max(blocks_per_req)), int(ids[0]), dtype=torch.int32, device=device
    )
    for r, chunk in enumerate(ids.split(blocks_per_req)):
        block_table[r, : len(chunk)] = chunk.to(torch.int32)
    starts = [0]
    for q in q_lens:
        starts.append(starts[-1] + q)
    query = torch.randn(starts[-1], num_heads, head_size, device=device).to(dtype)
    return PagedAttentionInputs(
        query=query,
        k_cache=k_cache,
        v_cache=v_cache,
        block_table=block_table,
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        scale=head_size**-0.5,
    )
