"""Paged attention over a flat varlen batch that mixes prefill chunks and decodes.

Layout of one step's batch (``query_start_loc`` has ``num_reqs + 1`` entries)::

    query rows:  | req 0: 5 new tokens | req 1: 1 (decode) | req 2: 3 |
    query_start_loc = [0, 5, 6, 9]
    seq_lens        = [5, 40, 19]   # context incl. the new tokens

Query row ``i`` of request ``r`` sits at position ``seq_lens[r] - q_len[r] + i`` and attends
causally to positions ``0 ..= that``; those keys are read through the request's block table
(``block_table[r, pos // block_size]``, offset ``pos % block_size``), which already holds the
new tokens' K/V (``store_kv_cache`` runs first) and any prefix-cached context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Queries up to this long (a decode and 16 speculated tokens) are batched across requests.
MAX_SHORT_QUERY = 17


def paged_attention_reference(
    query: torch.Tensor,  # [num_tokens, num_heads, head_size]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    block_table: torch.Tensor,  # [num_reqs, max_blocks_per_req] int32
    query_start_loc: torch.Tensor,  # [num_reqs + 1] int32
    seq_lens: torch.Tensor,  # [num_reqs] int32
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    *,
    key: torch.Tensor | None = None,  # [num_tokens, num_kv_heads, head_size], this step's
    value: torch.Tensor | None = None,  # [num_tokens, num_kv_heads, head_size], this step's
) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
    """Plain-PyTorch paged attention: gather K/V per request, then SDPA.

    Decode-only rows (query length 1) are batched into one padded SDPA call, since a step of
    continuous batching is mostly decodes; so are short queries (a decode verifying a few
    speculated tokens); longer prefill chunks run one request at a time. Given the step's
    own ``key``/``value``, a prefill chunk with no cached context (``seq_len == q_len``: a
    whole prompt, or a first chunk) attends to those directly with ``is_causal``: the same
    numbers as reading them back from the cache, without the gather, the explicit mask and
    the masked half of the scores (embedding requests are all such chunks).
    """
    _, num_heads, head_size = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    q_lens = [starts[i + 1] - starts[i] for i in range(len(lens))]
    decode_rows = [r for r, q in enumerate(q_lens) if q == 1]
    short_rows = [r for r, q in enumerate(q_lens) if 1 < q <= MAX_SHORT_QUERY]
    prefill_rows = [r for r, q in enumerate(q_lens) if q > MAX_SHORT_QUERY]

    if decode_rows:
        # The G query heads that share a KV head become G "query positions" of one 4-D SDPA
        # call, and K/V are gathered head-major, so no tensor is 5-D or broadcast: this is
        # the shape the fused CPU kernel takes (a 5-D call falls back to ~5x slower math).
        num_decodes = len(decode_rows)
        rows = torch.tensor(decode_rows, device=query.device)
        ctx = max(lens[r] for r in decode_rows)
        num_ctx_blocks = (ctx + block_size - 1) // block_size
        blocks = block_table[rows, :num_ctx_blocks].long()  # [D, nb]
        k = gather_head_major(k_cache, blocks, ctx)  # [D, kvh, ctx, hs]
        v = gather_head_major(v_cache, blocks, ctx)
        valid = torch.arange(ctx, device=query.device)[None, :] < seq_lens[rows, None]
        q = query[query_start_loc[rows].long()]  # [D, heads, hs]
        q = q.view(num_decodes, num_kv_heads, group, head_size)
        mask = valid[:, None, None, :]  # [D, 1, 1, ctx]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        out[query_start_loc[rows].long()] = o.reshape(num_decodes, num_heads, head_size)

    if short_rows:
        _attend_short_queries(
            query,
            k_cache,
            v_cache,
            block_table,
            seq_lens,
            starts,
            q_lens,
            lens,
            short_rows,
            scale,
            out,
        )

    for r in prefill_rows:
        q_start, q_len, ctx = starts[r], q_lens[r], lens[r]
        q = query[q_start : q_start + q_len].transpose(0, 1)[None]  # [1, heads, q_len, hs]
        if key is not None and value is not None and ctx == q_len:
            k = key[q_start : q_start + q_len].transpose(0, 1)[None]  # [1, kvh, q_len, hs]
            v = value[q_start : q_start + q_len].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=True
            )
            out[q_start : q_start + q_len] = o[0].transpose(0, 1)
            continue
        num_ctx_blocks = (ctx + block_size - 1) // block_size
        blocks = block_table[r : r + 1, :num_ctx_blocks].long()  # [1, nb]
        k = gather_head_major(k_cache, blocks, ctx)  # [1, kvh, ctx, hs]
        v = gather_head_major(v_cache, blocks, ctx)
        # Causal with an offset: query i sits at position ctx - q_len + i.
        q_pos = torch.arange(ctx - q_len, ctx, device=query.device)
        mask = torch.arange(ctx, device=query.device)[None, :] <= q_pos[:, None]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        out[q_start : q_start + q_len] = o[0].transpose(0, 1)
    return out


def _attend_short_queries(
    query: torch.Tensor,  # [num_tokens, num_heads, head_size]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    starts: list[int],
    q_lens: list[int],
    lens: list[int],
    rows: list[int],
    scale: float,
    out: torch.Tensor,
) -> None:
    """Rows of 2..``MAX_SHORT_QUERY`` query tokens in one padded 4-D SDPA call, like decodes.

    Row ``d``'s queries are padded to ``L`` by repeating its last one (outputs dropped); the
    ``G`` query heads of a KV head and the ``L`` positions become ``L * G`` query rows::

        q:    [D, kvh, L * G, hs]    row (i, g): query token i, head kv * G + g
        mask: [D, 1, L * G, ctx]     key j visible iff j <= seq_len - q_len + i
    """
    device = query.device
    num_heads, head_size = query.shape[1:]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    num_rows, width = len(rows), max(q_lens[r] for r in rows)
    ctx = max(lens[r] for r in rows)
    index = torch.tensor(rows, device=device)
    blocks = block_table[index, : (ctx + block_size - 1) // block_size].long()
    k = gather_head_major(k_cache, blocks, ctx)  # [D, kvh, ctx, hs]
    v = gather_head_major(v_cache, blocks, ctx)
    offsets = torch.arange(width, device=device)[None, :]  # [1, L]
    row_q_lens = torch.tensor([q_lens[r] for r in rows], device=device)[:, None]  # [D, 1]
    clamped = torch.minimum(offsets, row_q_lens - 1)  # [D, L]
    tokens = torch.tensor([starts[r] for r in rows], device=device)[:, None] + clamped
    positions = seq_lens[index, None].long() - row_q_lens + clamped  # [D, L]
    mask = torch.arange(ctx, device=device)[None, None, :] <= positions[:, :, None]
    mask = mask.repeat_interleave(group, dim=1)[:, None]  # [D, 1, L * G, ctx]
    q = query[tokens].view(num_rows, width, num_kv_heads, group, head_size)
    q = q.permute(0, 2, 1, 3, 4).reshape(num_rows, num_kv_heads, width * group, head_size)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    o = o.view(num_rows, num_kv_heads, width, group, head_size).permute(0, 2, 1, 3, 4)
    o = o.reshape(num_rows, width, num_heads, head_size)
    real = offsets < row_q_lens  # [D, L]
    out[tokens[real]] = o[real]


def gather_head_major(
    cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    blocks: torch.Tensor,  # [R, nb] int64
    ctx: int,
) -> torch.Tensor:  # [R, num_kv_heads, ctx, head_size]
    """Copy ``R`` requests' first ``ctx`` cached positions into one contiguous tensor."""
    num_reqs, num_blocks = blocks.shape
    block_size, num_kv_heads, head_size = cache.shape[1:]
    gathered = cache.permute(0, 2, 1, 3)[blocks]  # [R, nb, kvh, block_size, hs]
    gathered = gathered.transpose(1, 2).reshape(
        num_reqs, num_kv_heads, num_blocks * block_size, head_size
    )
    return gathered[:, :, :ctx]
