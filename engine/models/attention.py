"""Paged attention as the decoder layers see it: write this step's K/V, then attend.

One step's batch is flat: the new tokens of every scheduled request back to back, no padding::

    tokens:           | req 0: 5 new (prefill) | req 1: 1 (decode) | req 2: 3 (chunk) |
    query_start_loc = [0, 5, 6, 9]
    seq_lens        = [5, 40, 19]        # cached context + new tokens, per request
    slot_mapping[t] = block_table[r, pos // block_size] * block_size + pos % block_size

``AttentionMetadata`` carries these per-step tensors down the forward call explicitly; the
per-layer caches travel beside it as ``KVCache`` records.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import attention_reads_plan, paged_attention, store_kv_cache
from kernels.attention import PagedAttentionInputs, ReferencePlan, plan_attention


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64
    block_table: torch.Tensor  # [num_reqs, max_blocks_per_req] int32, unused entries 0
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32
    seq_lens: torch.Tensor  # [num_reqs] int32
    max_query_len: int
    max_seq_len: int
    # The PyTorch attention's per-step plan, made by the first layer and reused by the others.
    reference_plan: ReferencePlan | None = None


@dataclass(slots=True)
class KVCache:
    """One layer's cache."""

    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]


def paged_attend(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    cache: KVCache,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Store the new tokens' K/V in the cache first, so attention reads one uniform context."""
    store_kv_cache(key, value, cache.k_cache, cache.v_cache, meta.slot_mapping)
    batch = PagedAttentionInputs(
        query,
        cache.k_cache,
        cache.v_cache,
        meta.block_table,
        meta.query_start_loc,
        meta.seq_lens,
        meta.max_query_len,
        meta.max_seq_len,
        scale,
    )
    if meta.reference_plan is None and attention_reads_plan(batch):
        block_size = cache.k_cache.shape[1]
        meta.reference_plan = plan_attention(
            meta.block_table, meta.query_start_loc, meta.seq_lens, block_size
        )
    return paged_attention(batch, key=key, value=value, plan=meta.reference_plan)
