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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Queries up to this long (a decode and 16 speculated tokens) are batched across requests.
MAX_SHORT_QUERY = 17
# Decodes are padded to the longest context of their group; a new group starts where the
# contexts (sorted, longest first) fall below this fraction of the group's longest, unless
# the group is still smaller than MIN_DECODE_GROUP (an SDPA call costs a little on its own).
DECODE_GROUP_RATIO = 0.6
MIN_DECODE_GROUP = 4


@dataclass(slots=True)
class PagedAttentionInputs:
    """One step's attention batch, as both implementations read it (layout: module doc).

    ``max_query_len`` and ``max_seq_len`` size the Triton kernel's tiles; neither needs to be
    exact for correctness.
    """

    query: torch.Tensor  # [num_tokens, num_heads, head_size]
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_size]
    v_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_size]
    block_table: torch.Tensor  # [num_reqs, max_blocks_per_req] int32
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32
    seq_lens: torch.Tensor  # [num_reqs] int32
    max_query_len: int
    max_seq_len: int
    scale: float


@dataclass(slots=True)
class DecodePlan:
    """One group of one-token rows of a step, padded to their longest context."""

    query_rows: torch.Tensor  # [D] int64: each decode's row in the flat batch
    block_ids: torch.Tensor  # [D * num_ctx_blocks] int64: their block tables, row-major
    mask: torch.Tensor  # [D, 1, 1, ctx] bool: position j < that request's seq_len
    ctx: int  # the longest context among them
    num_ctx_blocks: int


@dataclass(slots=True)
class ShortQueryPlan:
    """The rows of 2..``MAX_SHORT_QUERY`` query tokens of a step (a decode verifying its
    speculated tokens), padded to the longest: what ``_attend_short_queries`` gathers and
    masks, the same for every layer (layout: that function's docstring)."""

    rows: list[int]
    block_ids: torch.Tensor  # [D * num_ctx_blocks] int64: their block tables, row-major
    tokens: torch.Tensor  # [D, L] int64: each padded query position's row in the flat batch
    real: torch.Tensor  # [D, L] bool: the position is a real query token, not padding
    mask: torch.Tensor  # [D, L, ctx] bool: key j visible to query position i
    width: int  # L, the longest query
    ctx: int  # the longest context among them
    # ``mask`` with each query position repeated for the G heads that share a KV head,
    # by G: made by the first layer that asks, reused by the others.
    head_masks: dict[int, torch.Tensor]

    def mask_for(self, group: int) -> torch.Tensor:  # [D, 1, L * G, ctx]
        if group not in self.head_masks:
            self.head_masks[group] = self.mask.repeat_interleave(group, dim=1)[:, None]
        return self.head_masks[group]


@dataclass(slots=True)
class ReferencePlan:
    """What the PyTorch path derives from a step's metadata before attending: the same for
    every layer of the step, so a caller builds it once and passes it to each layer."""

    starts: list[int]  # query_start_loc
    lens: list[int]  # seq_lens
    q_lens: list[int]
    decodes: list[DecodePlan]
    short: ShortQueryPlan | None  # rows of 2..MAX_SHORT_QUERY query tokens, if any
    prefill_rows: list[int]  # longer chunks, one SDPA call each


def plan_attention(
    block_table: torch.Tensor,  # [num_reqs, max_blocks_per_req] int32
    query_start_loc: torch.Tensor,  # [num_reqs + 1] int32
    seq_lens: torch.Tensor,  # [num_reqs] int32
    block_size: int,
) -> ReferencePlan:
    """Sort a step's requests by query length and precompute the decode groups' gathers.

    Decodes are grouped by context length so that a short context is not padded to the
    longest one of the step (that padding is gathered and attended for nothing)::

        contexts sorted:  760 700 650 | 400 380 300 260 | 120 90 40 12
        groups:           pad to 760  | pad to 400       | pad to 120
    """
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    q_lens = [starts[i + 1] - starts[i] for i in range(len(lens))]
    decode_rows = sorted((r for r, q in enumerate(q_lens) if q == 1), key=lambda r: -lens[r])
    groups: list[list[int]] = []
    for r in decode_rows:
        last = groups[-1] if groups else None
        if last is not None and (
            len(last) < MIN_DECODE_GROUP or lens[r] >= DECODE_GROUP_RATIO * lens[last[0]]
        ):
            last.append(r)
        else:
            groups.append([r])
    return ReferencePlan(
        starts=starts,
        lens=lens,
        q_lens=q_lens,
        decodes=[
            _plan_decodes(g, lens, block_table, query_start_loc, seq_lens, block_size)
            for g in groups
        ],
        short=_plan_short_queries(
            [r for r, q in enumerate(q_lens) if 1 < q <= MAX_SHORT_QUERY],
            starts,
            q_lens,
            lens,
            block_table,
            block_size,
        ),
        prefill_rows=[r for r, q in enumerate(q_lens) if q > MAX_SHORT_QUERY],
    )


def _plan_decodes(
    group: list[int],  # rows of one-token queries, longest context first
    lens: list[int],
    block_table: torch.Tensor,  # [num_reqs, max_blocks_per_req] int32
    query_start_loc: torch.Tensor,  # [num_reqs + 1] int32
    seq_lens: torch.Tensor,  # [num_reqs] int32
    block_size: int,
) -> DecodePlan:
    rows = torch.tensor(group, device=block_table.device)
    ctx = lens[group[0]]
    num_ctx_blocks = (ctx + block_size - 1) // block_size
    valid = torch.arange(ctx, device=block_table.device)[None, :] < seq_lens[rows, None]
    return DecodePlan(
        query_rows=query_start_loc[rows].long(),
        block_ids=block_table[rows, :num_ctx_blocks].long().flatten(),
        mask=valid[:, None, None, :],
        ctx=ctx,
        num_ctx_blocks=num_ctx_blocks,
    )


def _plan_short_queries(
    rows: list[int],
    starts: list[int],
    q_lens: list[int],
    lens: list[int],
    block_table: torch.Tensor,  # [num_reqs, max_blocks_per_req] int32
    block_size: int,
) -> ShortQueryPlan | None:
    if not rows:
        return None
    device = block_table.device
    width, ctx = max(q_lens[r] for r in rows), max(lens[r] for r in rows)
    index = torch.tensor(rows, device=device)
    num_ctx_blocks = (ctx + block_size - 1) // block_size
    offsets = torch.arange(width, device=device)[None, :]  # [1, L]
    row_q_lens = torch.tensor([q_lens[r] for r in rows], device=device)[:, None]  # [D, 1]
    clamped = torch.minimum(offsets, row_q_lens - 1)  # [D, L]
    row_starts = torch.tensor([starts[r] for r in rows], device=device)[:, None]
    row_lens = torch.tensor([lens[r] for r in rows], device=device)[:, None]
    positions = row_lens - row_q_lens + clamped  # [D, L]
    return ShortQueryPlan(
        rows=rows,
        block_ids=block_table[index, :num_ctx_blocks].long().flatten(),
        tokens=row_starts + clamped,
        real=offsets < row_q_lens,
        mask=torch.arange(ctx, device=device)[None, None, :] <= positions[:, :, None],
        width=width,
        ctx=ctx,
        head_masks={},
    )


def paged_attention_reference(
    batch: PagedAttentionInputs,
    *,
    key: torch.Tensor | None = None,  # [num_tokens, num_kv_heads, head_size], this step's
    value: torch.Tensor | None = None,  # [num_tokens, num_kv_heads, head_size], this step's
    plan: ReferencePlan | None = None,  # plan_attention of these tensors, if already made
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
    query, k_cache, v_cache = batch.query, batch.k_cache, batch.v_cache
    _, num_heads, head_size = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    if plan is None:
        plan = plan_attention(batch.block_table, batch.query_start_loc, batch.seq_lens, block_size)

    for d in plan.decodes:
        # The G query heads that share a KV head become G "query positions" of one 4-D SDPA
        # call, and K/V are gathered head-major, so no tensor is 5-D or broadcast: this is
        # the shape the fused CPU kernel takes (a 5-D call falls back to ~5x slower math).
        num_decodes = d.query_rows.shape[0]
        k = gather_blocks(k_cache, d.block_ids, num_decodes, d.ctx)  # [D, kvh, ctx, hs]
        v = gather_blocks(v_cache, d.block_ids, num_decodes, d.ctx)
        q = query[d.query_rows].view(num_decodes, num_kv_heads, group, head_size)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=d.mask, scale=batch.scale)
        out[d.query_rows] = o.reshape(num_decodes, num_heads, head_size)

    if plan.short is not None:
        _attend_short_queries(batch, plan.short, out)

    attend_prefills(batch, plan, out, key=key, value=value)
    return out


def attend_prefills(
    batch: PagedAttentionInputs,
    plan: ReferencePlan,
    out: torch.Tensor,  # [num_tokens, num_heads, head_size]: the prefill rows are written
    *,
    key: torch.Tensor | None = None,  # [num_tokens, num_kv_heads, head_size], this step's
    value: torch.Tensor | None = None,
) -> None:
    """The rows of over ``MAX_SHORT_QUERY`` query tokens, one SDPA call each."""
    query, k_cache, v_cache = batch.query, batch.k_cache, batch.v_cache
    block_table, scale = batch.block_table, batch.scale
    block_size = k_cache.shape[1]
    starts, lens, q_lens = plan.starts, plan.lens, plan.q_lens
    for r in plan.prefill_rows:
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
        blocks = block_table[r, :num_ctx_blocks].long()  # [nb]
        k = gather_blocks(k_cache, blocks, 1, ctx)  # [1, kvh, ctx, hs]
        v = gather_blocks(v_cache, blocks, 1, ctx)
        # Causal with an offset: query i sits at position ctx - q_len + i.
        q_pos = torch.arange(ctx - q_len, ctx, device=query.device)
        mask = torch.arange(ctx, device=query.device)[None, :] <= q_pos[:, None]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        out[q_start : q_start + q_len] = o[0].transpose(0, 1)


def _attend_short_queries(
    batch: PagedAttentionInputs,
    short: ShortQueryPlan,
    out: torch.Tensor,  # [num_tokens, num_heads, head_size]
) -> None:
    """Rows of 2..``MAX_SHORT_QUERY`` query tokens in one padded 4-D SDPA call, like decodes.

    Row ``d``'s queries are padded to ``L`` by repeating its last one (outputs dropped); the
    ``G`` query heads of a KV head and the ``L`` positions become ``L * G`` query rows::

        q:    [D, kvh, L * G, hs]    row (i, g): query token i, head kv * G + g
        mask: [D, 1, L * G, ctx]     key j visible iff j <= seq_len - q_len + i
    """
    query, k_cache, v_cache = batch.query, batch.k_cache, batch.v_cache
    num_heads, head_size = query.shape[1:]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    num_rows, width = len(short.rows), short.width
    k = gather_blocks(k_cache, short.block_ids, num_rows, short.ctx)  # [D, kvh, ctx, hs]
    v = gather_blocks(v_cache, short.block_ids, num_rows, short.ctx)
    q = query[short.tokens].view(num_rows, width, num_kv_heads, group, head_size)
    q = q.permute(0, 2, 1, 3, 4).reshape(num_rows, num_kv_heads, width * group, head_size)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=short.mask_for(group), scale=batch.scale)
    o = o.view(num_rows, num_kv_heads, width, group, head_size).permute(0, 2, 1, 3, 4)
    o = o.reshape(num_rows, width, num_heads, head_size)
    out[short.tokens[short.real]] = o[short.real]


def gather_blocks(
    cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    block_ids: torch.Tensor,  # [R * nb] int64: R block tables of nb entries, row-major
    num_reqs: int,
    ctx: int,
) -> torch.Tensor:  # [R, num_kv_heads, ctx, head_size], a strided view
    """``R`` requests' first ``ctx`` cached positions, head-major.

    One copy: ``index_select`` moves whole blocks (contiguous rows of
    ``block_size * num_kv_heads * head_size``), far faster on the CPU than advanced indexing,
    which goes element by element; the head-major order is a view (SDPA takes strides)::

        [R * nb, bs, kvh, hs] -> [R, nb * bs, kvh, hs] -> [R, kvh, ctx, hs] (transposed view)
    """
    block_size, num_kv_heads, head_size = cache.shape[1:]
    num_blocks = block_ids.shape[0] // num_reqs
    gathered = cache.index_select(0, block_ids)
    gathered = gathered.view(num_reqs, num_blocks * block_size, num_kv_heads, head_size)
    return gathered[:, :ctx].transpose(1, 2)
