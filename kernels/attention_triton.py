"""Triton paged attention: one varlen kernel for a step that mixes prefill chunks and decodes.

The batch layout is the one of ``kernels.attention`` (flat query rows, ``query_start_loc``,
``seq_lens`` that include the new tokens, K/V read through block tables). One program computes
a tile of query rows of one request against one KV head, streaming the request's context in
tiles of ``TILE_N`` key positions with an online softmax (fp32 statistics and accumulator).

A tile packs ``BLOCK_Q`` query tokens times the ``GROUP`` query heads that share the KV head,
so a decode with GQA still fills the rows of a matrix multiply::

    tile row m  ->  query token  q_block_local * BLOCK_Q + m // GROUP
                    query head   kv_head * GROUP + m % GROUP

    GROUP = 4, BLOCK_M = 16, BLOCK_Q = 4:
    rows  0..3  token t+0, heads h..h+3  |  rows 4..7  token t+1, heads h..h+3  | ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels import launch_checks as checks
from kernels.attention import PagedAttentionInputs


@triton.jit
def _first_q_block(query_start_loc_ptr, req, BLOCK_Q: tl.constexpr):
    """Index of the first q block of request ``req`` (an upper bound on blocks before it).

    ``query_start_loc[r] // BLOCK_Q + r`` leaves every request at least ``cdiv(q_len, BLOCK_Q)``
    blocks without a prefix sum, so the grid needs no host sync::

        BLOCK_Q = 4, query_start_loc = [0, 5, 6, 9]  ->  first blocks 0, 2, 3
        q blocks: 0 req0 rows 0-3 | 1 req0 row 4 | 2 req1 row 0 | 3 req2 rows 0-2 | 4 (empty)
    """
    return tl.load(query_start_loc_ptr + req) // BLOCK_Q + req


@triton.jit
def _find_request(query_start_loc_ptr, num_reqs, q_block, BLOCK_Q: tl.constexpr):
    """The last request whose first q block is ``<= q_block`` (binary search)."""
    lo = 0
    hi = num_reqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _first_q_block(query_start_loc_ptr, mid, BLOCK_Q) <= q_block:
            lo = mid
        else:
            hi = mid - 1
    return lo


@triton.jit
def _load_kv_tile(
    cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_size]
    slot_offsets,  # [TILE_N] int64: element offset of each key position's (block, offset)
    dims,  # [HEAD_PAD]
    mask,  # [TILE_N, HEAD_PAD]
):
    return tl.load(cache_ptr + slot_offsets[:, None] + dims[None, :], mask=mask, other=0.0)


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``tl.dot``, except that the CPU interpreter multiplies bf16 as raw integers: it gets fp32."""
    if UPCAST_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _softmax_step(
    scores,  # [BLOCK_M, TILE_N] fp32, already scaled by log2(e) / sqrt(d); -inf where masked
    v,  # [TILE_N, HEAD_PAD]
    m_i,  # [BLOCK_M] running max
    l_i,  # [BLOCK_M] running denominator
    acc,  # [BLOCK_M, HEAD_PAD] fp32 running numerator
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """One online-softmax update; a row with no visible key so far keeps max -inf and sum 0."""
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    m_base = tl.where(m_new > float("-inf"), m_new, 0.0)
    p = tl.exp2(scores - m_base[:, None])  # [BLOCK_M, TILE_N]
    alpha = tl.exp2(m_i - m_base)  # [BLOCK_M]
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION, UPCAST_DOT)
    return m_new, l_i, acc


# num_reqs varies every step: specializing on num_reqs == 1 would only add recompiles.
@triton.jit(do_not_specialize=["num_reqs"])
def _paged_attention_kernel(
    out_ptr,  # [num_tokens, num_heads, head_size]
    query_ptr,  # [num_tokens, num_heads, head_size]
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_size]
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_size], strides of k_cache
    block_table_ptr,  # [num_reqs, max_blocks_per_req]
    query_start_loc_ptr,  # [num_reqs + 1]
    seq_lens_ptr,  # [num_reqs]
    num_reqs,
    qk_scale,  # softmax scale * log2(e): the kernel exponentiates with exp2
    stride_ot,
    stride_oh,
    stride_qt,
    stride_qh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    GROUP: tl.constexpr,  # query heads per KV head
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,  # HEAD_SIZE rounded up to a power of two >= 16
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_M: tl.constexpr,  # tile rows (query tokens x heads of the group)
    BLOCK_Q: tl.constexpr,  # query tokens per tile, BLOCK_M // GROUP
    TILE_N: tl.constexpr,  # key positions per iteration
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # interpreter with bf16
):
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    req = _find_request(query_start_loc_ptr, num_reqs, q_block, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    q_block_local = q_block - _first_q_block(query_start_loc_ptr, req, BLOCK_Q)
    if q_block_local * BLOCK_Q >= q_len:
        return
    context_offset = tl.load(seq_lens_ptr + req) - q_len  # position of the request's query row 0

    rows = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    q_idx = q_block_local * BLOCK_Q + rows // GROUP  # [BLOCK_M] query row within the request
    heads = kv_head * GROUP + rows % GROUP  # [BLOCK_M]
    row_ok = (rows < BLOCK_Q * GROUP) & (q_idx < q_len)  # [BLOCK_M]
    dims = tl.arange(0, HEAD_PAD)  # [HEAD_PAD]
    dim_ok = dims < HEAD_SIZE  # [HEAD_PAD]
    tokens = (q_start + q_idx).to(tl.int64)  # [BLOCK_M]
    q_mask = row_ok[:, None] & dim_ok[None, :]  # [BLOCK_M, HEAD_PAD]
    q_offsets = tokens[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :]
    q = tl.load(query_ptr + q_offsets, mask=q_mask, other=0.0)  # [BLOCK_M, HEAD_PAD]
    q_pos = context_offset + q_idx  # [BLOCK_M] absolute position of each row's token

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], tl.float32)
    # Keys up to the tile's last query token are visible; later ones are all masked.
    kv_len = context_offset + tl.minimum(q_len, (q_block_local + 1) * BLOCK_Q)
    block_table_row = block_table_ptr + req.to(tl.int64) * stride_bt
    for tile in range(0, tl.cdiv(kv_len, TILE_N)):
        pos = tile * TILE_N + tl.arange(0, TILE_N)  # [TILE_N] key positions
        in_ctx = pos < kv_len  # [TILE_N]
        block_ids = tl.load(block_table_row + pos // BLOCK_SIZE, mask=in_ctx, other=0)
        # int64 before the multiply: block_id * stride overflows int32 for large caches.
        slot_offsets = (
            block_ids.to(tl.int64) * stride_cb
            + (pos % BLOCK_SIZE) * stride_cs
            + kv_head * stride_ch
        )  # [TILE_N] int64
        kv_mask = in_ctx[:, None] & dim_ok[None, :]  # [TILE_N, HEAD_PAD]
        k = _load_kv_tile(k_cache_ptr, slot_offsets, dims, kv_mask)  # [TILE_N, HEAD_PAD]
        v = _load_kv_tile(v_cache_ptr, slot_offsets, dims, kv_mask)  # [TILE_N, HEAD_PAD]
        scores = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST_DOT) * qk_scale
        visible = in_ctx[None, :] & (pos[None, :] <= q_pos[:, None])  # [BLOCK_M, TILE_N]
        scores = tl.where(visible, scores, float("-inf"))
        m_i, l_i, acc = _softmax_step(scores, v, m_i, l_i, acc, DOT_PRECISION, UPCAST_DOT)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # [BLOCK_M, HEAD_PAD]
    out_offsets = tokens[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=q_mask)


@dataclass(frozen=True, slots=True)
class AttentionTiles:
    """The tile shape and width of one launch: the constexprs that size registers and shared
    memory (the compile gate, ``tests/kernels/test_hopper_compile.py``, builds every one)."""

    block_m: int  # tile rows: query tokens x heads of the group
    tile_n: int  # key positions per iteration
    head_pad: int  # head_size rounded up to a power of two >= 16
    num_warps: int


def attention_tiles(
    group: int, head_size: int, max_query_len: int, max_seq_len: int
) -> AttentionTiles:
    """Rows: 16 for decodes (little to share), up to 64 when prefill rows fill them. Keys: up
    to 64 per iteration. Warps: 4, except for the largest tile (64 rows, 64 keys, heads padded
    to 128), whose share per thread overflows sm_80's 255 registers with 4 and spills."""
    wanted = triton.next_power_of_2(max(1, max_query_len) * group)
    block_m = max(triton.next_power_of_2(group), min(64, max(16, wanted)))
    tile_n = min(64, max(16, triton.next_power_of_2(max_seq_len)))
    head_pad = max(16, triton.next_power_of_2(head_size))
    num_warps = 8 if block_m * tile_n * head_pad >= 64 * 64 * 128 else 4
    return AttentionTiles(block_m, tile_n, head_pad, num_warps)


def _check_inputs(batch: PagedAttentionInputs) -> dict[str, torch.Tensor]:
    """Raise on what the kernel cannot read; return its pointer keywords for the batch."""
    query, k_cache, v_cache = batch.query, batch.k_cache, batch.v_cache
    block_table, seq_lens = batch.block_table, batch.seq_lens
    query_start_loc = batch.query_start_loc
    checks.check_rank("query", query, 3)
    checks.check_rank("k_cache", k_cache, 4)
    checks.check_rank("block_table", block_table, 2)
    checks.check_rank("query_start_loc", query_start_loc, 1)
    checks.check_dtype("query", query, checks.FLOAT_DTYPES)
    for name, t in (("block_table", block_table), ("query_start_loc", query_start_loc)):
        checks.check_dtype(name, t, checks.INDEX_DTYPES)
    checks.check_dtype("seq_lens", seq_lens, checks.INDEX_DTYPES)
    tensors = checks.pointers(
        query=query, k_cache=k_cache, v_cache=v_cache, block_table=block_table
    )
    tensors |= checks.pointers(query=query, query_start_loc=query_start_loc, seq_lens=seq_lens)
    if k_cache.dtype != query.dtype or v_cache.dtype != query.dtype:
        raise ValueError(f"caches ({k_cache.dtype}, {v_cache.dtype}) must match {query.dtype}")
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError("k_cache and v_cache must have the same shape and strides")
    num_heads, head_size = query.shape[1], query.shape[2]
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_size:
        raise ValueError(f"cache head_size {k_cache.shape[3]} != query head_size {head_size}")
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    num_reqs = block_table.shape[0]
    checks.check_shape("query_start_loc", query_start_loc, (num_reqs + 1,))
    checks.check_shape("seq_lens", seq_lens, (num_reqs,))
    checks.check_unit_stride("query", query)
    checks.check_unit_stride("k_cache", k_cache)
    return tensors


def paged_attention_triton(
    batch: PagedAttentionInputs,
) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
    """Paged attention with the semantics of ``paged_attention_reference``, in one launch.

    Grid ``(num_tokens // BLOCK_Q + num_reqs, num_kv_heads)``: axis 0 enumerates q blocks of
    ``BLOCK_Q`` query tokens, each owned by one request (the mapping, found in the kernel by
    binary search over ``query_start_loc``, over-allocates at most one block per request;
    surplus programs return at once); axis 1 is the KV head, whose ``GROUP`` query heads share
    the program so each K/V tile is loaded once for all of them. ``max_query_len`` sizes the
    tile rows and ``max_seq_len`` the key tile; neither needs to be exact for correctness.
    """
    tensors = _check_inputs(batch)
    query, k_cache, block_table = batch.query, batch.k_cache, batch.block_table
    num_tokens, num_heads, head_size = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_reqs = block_table.shape[0]
    group = num_heads // num_kv_heads
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_tokens == 0 or num_reqs == 0:
        return out
    tiles = attention_tiles(group, head_size, batch.max_query_len, batch.max_seq_len)
    block_q = tiles.block_m // group
    grid = (num_tokens // block_q + num_reqs, num_kv_heads)
    _paged_attention_kernel[grid](
        out_ptr=out,
        **tensors,
        num_reqs=num_reqs,
        qk_scale=batch.scale * math.log2(math.e),
        **checks.strides(out, "ot oh"),
        **checks.strides(query, "qt qh"),
        **checks.strides(k_cache, "cb cs ch"),
        **checks.strides(block_table, "bt"),
        GROUP=group,
        HEAD_SIZE=head_size,
        HEAD_PAD=tiles.head_pad,
        BLOCK_SIZE=block_size,
        BLOCK_M=tiles.block_m,
        BLOCK_Q=block_q,
        TILE_N=tiles.tile_n,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        UPCAST_DOT=triton.knobs.runtime.interpret and query.dtype == torch.bfloat16,
        num_warps=tiles.num_warps,
    )
    return out
