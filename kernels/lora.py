"""Batched LoRA matmuls: one step's tokens, each under its own adapter (or none), in two launches.

A LoRA projection adds ``(x A^T) B^T`` to a base projection, with ``A`` and ``B`` those of the
token's adapter. Punica and S-LoRA batch many adapters by splitting it in two, each a grouped
matmul over the adapters present in the step::

    shrink:  u[t] = x[t] @ A[slot(t)]^T          [T, in]  -> [T, S * R]   (R: padded rank)
    expand:  y[t, shard s] += u[t, s] @ B[slot(t), shard s]^T             (in place, y: [T, out])

``S`` is the number of fused shards a projection carries (q/k/v: 3, gate/up: 2, o and down: 1);
each shard has its own ``A`` and ``B``. The adapters' scaling (``lora_alpha / r``) is folded into
``B`` when they are loaded, and a rank ``r < R`` is zero-padded, so the padding adds nothing.

Tokens are grouped by slot once per step (``LoRAMapping`` in ``engine.models.lora``): the
token indices sorted by slot, and where each slot's run starts::

    token_slots  = [ 1, -1, 0, 1 ]   ->   sorted_token_ids = [ 2, 0, 3 ]
                                          slot_start       = [ 0, 1, 3 ]   (slots 0, 1)

A token of the base model (slot -1) is in no run: no program touches its row, so its ``y``
is the base projection exactly.
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from kernels.launch_checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_dtype,
    check_rank,
    check_unit_stride,
    pointers,
    strides,
)


def _runs(slot_start: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(slot, start, end)`` of every slot with tokens, read on the host."""
    starts = slot_start.tolist()
    return [(s, a, b) for s, (a, b) in enumerate(itertools.pairwise(starts)) if b > a]


def lora_shrink_reference(
    x: torch.Tensor,  # [num_tokens, in_features]
    lora_a: torch.Tensor,  # [num_slots, S * R, in_features]
    sorted_token_ids: torch.Tensor,  # [num_tokens] int: token rows grouped by slot
    slot_start: torch.Tensor,  # [num_slots + 1] int: slot i's run in sorted_token_ids
) -> torch.Tensor:  # [num_tokens, S * R] fp32; rows of base-model tokens are zero
    """The adapter tokens gathered in slot order once, then one matmul per slot present on
    its contiguous run: a few large ops whatever the mix, which is what the CPU needs."""
    out = torch.zeros(x.shape[0], lora_a.shape[1], dtype=torch.float32, device=x.device)
    runs = _runs(slot_start)
    if not runs:
        return out
    ids = sorted_token_ids[: runs[-1][2]].long()
    xs = x.index_select(0, ids)
    us = torch.empty(len(ids), lora_a.shape[1], dtype=x.dtype, device=x.device)
    for slot, start, end in runs:
        torch.mm(xs[start:end], lora_a[slot].T, out=us[start:end])
    return out.index_copy_(0, ids, us.float())


def lora_expand_reference(
    y: torch.Tensor,  # [num_tokens, out_features], updated in place
    shrunk: torch.Tensor,  # [num_tokens, S * R] fp32, from lora_shrink
    lora_b: torch.Tensor,  # [num_slots, out_features, R]
    shard_offsets: tuple[int, ...],  # S + 1 ints from 0: shard s is y's columns [o[s], o[s+1])
    sorted_token_ids: torch.Tensor,
    slot_start: torch.Tensor,
) -> torch.Tensor:
    """``y[t, shard s] += shrunk[t, s] @ B[slot(t), shard s]^T``, added in fp32 and rounded
    once to ``y``'s dtype; returns ``y``. One matmul per (slot present, shard)."""
    runs = _runs(slot_start)
    if not runs:
        return y
    rank = lora_b.shape[2]
    ids = sorted_token_ids[: runs[-1][2]].long()
    us = shrunk.index_select(0, ids)
    rows = y.index_select(0, ids).float()
    for slot, start, end in runs:
        for s, (c0, c1) in enumerate(itertools.pairwise(shard_offsets)):
            b = lora_b[slot, c0:c1].float().T
            rows[start:end, c0:c1].addmm_(us[start:end, s * rank : (s + 1) * rank], b)
    return y.index_copy_(0, ids, rows.to(y.dtype))


@triton.jit
def _lora_dot(a, b, UPCAST_DOT: tl.constexpr):
    """fp32 products exactly (the interpreter also multiplies bf16 wrongly); 16-bit natively."""
    if UPCAST_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _slot_run(slot_start_ptr, slot):
    """Where ``slot``'s run starts in ``sorted_token_ids``, and how many tokens it holds."""
    run_start = tl.load(slot_start_ptr + slot)
    return run_start, tl.load(slot_start_ptr + slot + 1) - run_start


@triton.jit
def _run_rows(sorted_token_ids_ptr, run_start, run_len, pid_m, BLOCK_M: tl.constexpr):
    """Block ``pid_m`` of a run: its tokens' rows ``[BLOCK_M]`` int64, and which are in the run."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    mask_m = offs_m < run_len
    rows = tl.load(sorted_token_ids_ptr + run_start + offs_m, mask=mask_m, other=0)
    return rows.to(tl.int64), mask_m


@triton.jit
def _lora_shrink_kernel(
    out_ptr,  # [num_tokens, N] fp32, zeroed
    x_ptr,  # [num_tokens, K]
    lora_a_ptr,  # [num_slots, N, K]
    sorted_token_ids_ptr,  # [num_tokens]
    slot_start_ptr,  # [num_slots + 1]
    stride_x,
    stride_al,
    stride_an,
    K: tl.constexpr,
    N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    slot = tl.program_id(2)
    run_start, run_len = _slot_run(slot_start_ptr, slot)
    if pid_m * BLOCK_M >= run_len:
        return
    rows, mask_m = _run_rows(sorted_token_ids_ptr, run_start, run_len, pid_m, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask_n = offs_n < N
    a_base = lora_a_ptr + slot.to(tl.int64) * stride_al
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        mask_k = offs_k < K
        x = tl.load(
            x_ptr + rows[:, None] * stride_x + offs_k[None, :],
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        a = tl.load(
            a_base + offs_n[None, :] * stride_an + offs_k[:, None],
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )  # [BLOCK_K, BLOCK_N]
        acc += _lora_dot(x, a, UPCAST_DOT)
    out = out_ptr + rows[:, None] * N + offs_n[None, :]
    tl.store(out, acc, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _lora_expand_kernel(
    y_ptr,  # [num_tokens, out_features], updated in place
    shrunk_ptr,  # [num_tokens, S * RANK] fp32
    lora_b_ptr,  # [num_slots, out_features, RANK]
    sorted_token_ids_ptr,
    slot_start_ptr,
    stride_y,
    stride_bl,
    stride_bn,
    NUM_SHARDS: tl.constexpr,  # 1 to 3; shard s is columns [OFFSET_s, OFFSET_s+1)
    OFFSET_1: tl.constexpr,
    OFFSET_2: tl.constexpr,
    OFFSET_3: tl.constexpr,
    RANK: tl.constexpr,
    RANK_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    slot = tl.program_id(2) // NUM_SHARDS
    shard = tl.program_id(2) % NUM_SHARDS
    run_start, run_len = _slot_run(slot_start_ptr, slot)
    col_start = tl.where(shard == 0, 0, tl.where(shard == 1, OFFSET_1, OFFSET_2))
    col_end = tl.where(shard == 0, OFFSET_1, tl.where(shard == 1, OFFSET_2, OFFSET_3))
    if pid_m * BLOCK_M >= run_len or pid_n * BLOCK_N >= col_end - col_start:
        return
    rows, mask_m = _run_rows(sorted_token_ids_ptr, run_start, run_len, pid_m, BLOCK_M)
    cols = col_start + pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask_n = cols < col_end
    offs_r = tl.arange(0, RANK_PAD)
    mask_r = offs_r < RANK
    u = tl.load(
        shrunk_ptr + rows[:, None] * (NUM_SHARDS * RANK) + shard * RANK + offs_r[None, :],
        mask=mask_m[:, None] & mask_r[None, :],
        other=0.0,
    )  # [BLOCK_M, RANK_PAD] fp32
    b = tl.load(
        lora_b_ptr + slot.to(tl.int64) * stride_bl + cols[None, :] * stride_bn + offs_r[:, None],
        mask=mask_r[:, None] & mask_n[None, :],
        other=0.0,
    )  # [RANK_PAD, BLOCK_N]
    delta = _lora_dot(u.to(b.dtype), b, UPCAST_DOT)  # [BLOCK_M, BLOCK_N] fp32
    y = y_ptr + rows[:, None] * stride_y + cols[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    old = tl.load(y, mask=mask, other=0.0)
    tl.store(y, (old.to(tl.float32) + delta).to(old.dtype), mask=mask)


def _check_mapping(sorted_token_ids: torch.Tensor, slot_start: torch.Tensor) -> None:
    check_rank("sorted_token_ids", sorted_token_ids, 1)
    check_rank("slot_start", slot_start, 1)
    check_dtype("sorted_token_ids", sorted_token_ids, INDEX_DTYPES)
    check_dtype("slot_start", slot_start, INDEX_DTYPES)


def _block_m(num_tokens: int) -> int:
    """Rows per program: a decode step's few tokens per slot waste little of 16."""
    return 16 if num_tokens <= 16 else 32


def _block_n(width: int) -> int:
    """Output columns per program, of ``width`` (``S * R``, or the widest shard)."""
    return max(16, min(64, triton.next_power_of_2(width)))


def _upcast_dot(dtype: torch.dtype) -> bool:
    """``_lora_dot``'s choice: fp32 products exactly, and every product under the interpreter
    (it multiplies bf16 wrongly); 16-bit products natively on a GPU."""
    return dtype == torch.float32 or bool(triton.knobs.runtime.interpret)


def lora_shrink_triton(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    slot_start: torch.Tensor,
) -> torch.Tensor:
    """``lora_shrink_reference`` as one launch.

    Grid ``(cdiv(num_tokens, BLOCK_M), cdiv(S * R, BLOCK_N), num_slots)``: a program multiplies
    up to ``BLOCK_M`` of one slot's tokens by ``BLOCK_N`` rows of its ``A``, and exits at once
    when its slot has fewer tokens. The grid depends on the shapes only, never on the mapping,
    so a CUDA graph replays it with any mix of adapters.
    """
    check_rank("x", x, 2)
    check_rank("lora_a", lora_a, 3)
    check_dtype("x", x, FLOAT_DTYPES)
    check_dtype("lora_a", lora_a, (x.dtype,))
    check_unit_stride("x", x)
    check_unit_stride("lora_a", lora_a)
    _check_mapping(sorted_token_ids, slot_start)
    tensors = pointers(x=x, lora_a=lora_a, sorted_token_ids=sorted_token_ids, slot_start=slot_start)
    num_tokens, k = x.shape
    num_slots, n, k_a = lora_a.shape
    if k_a != k or slot_start.shape[0] != num_slots + 1:
        raise ValueError(f"lora_a {tuple(lora_a.shape)} does not fit x {tuple(x.shape)} and slots")
    out = torch.zeros(num_tokens, n, dtype=torch.float32, device=x.device)
    if num_tokens == 0:
        return out
    block_m, block_n = _block_m(num_tokens), _block_n(n)
    _lora_shrink_kernel[(triton.cdiv(num_tokens, block_m), triton.cdiv(n, block_n), num_slots)](
        out_ptr=out,
        **tensors,
        **strides(x, "x"),
        **strides(lora_a, "al an"),
        K=k,
        N=n,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=64,
        UPCAST_DOT=_upcast_dot(x.dtype),
    )
    return out


def lora_expand_triton(
    y: torch.Tensor,
    shrunk: torch.Tensor,
    lora_b: torch.Tensor,
    shard_offsets: tuple[int, ...],
    sorted_token_ids: torch.Tensor,
    slot_start: torch.Tensor,
) -> torch.Tensor:
    """``lora_expand_reference`` as one launch.

    Grid ``(cdiv(num_tokens, BLOCK_M), cdiv(widest shard, BLOCK_N), num_slots * S)``: a program
    adds one slot's tokens' deltas to ``BLOCK_N`` columns of one shard; each ``y`` element has
    one writer (a token is in one slot's run), so the in-place add needs no atomics.
    """
    check_rank("y", y, 2)
    check_rank("shrunk", shrunk, 2)
    check_rank("lora_b", lora_b, 3)
    check_dtype("y", y, FLOAT_DTYPES)
    check_dtype("lora_b", lora_b, (y.dtype,))
    check_dtype("shrunk", shrunk, (torch.float32,))
    check_unit_stride("y", y)
    check_unit_stride("lora_b", lora_b)
    _check_mapping(sorted_token_ids, slot_start)
    tensors = pointers(
        y=y, shrunk=shrunk, lora_b=lora_b, sorted_token_ids=sorted_token_ids, slot_start=slot_start
    )
    num_tokens, out_features = y.shape
    num_slots, out_b, rank = lora_b.shape
    num_shards = len(shard_offsets) - 1
    if not 1 <= num_shards <= 3 or shard_offsets[0] != 0 or shard_offsets[-1] != out_features:
        raise ValueError(f"shard_offsets {shard_offsets} must split {out_features} in 1 to 3")
    if out_b != out_features or tuple(shrunk.shape) != (num_tokens, num_shards * rank):
        raise ValueError(
            f"y {tuple(y.shape)}, shrunk {tuple(shrunk.shape)} and lora_b {tuple(lora_b.shape)} "
            f"do not fit {num_shards} shards"
        )
    if not shrunk.is_contiguous():
        raise ValueError("shrunk must be contiguous")
    if num_tokens == 0:
        return y
    widest = max(b - a for a, b in itertools.pairwise(shard_offsets))
    ends = [*shard_offsets[1:], *[out_features] * (4 - len(shard_offsets))]
    block_m, block_n = _block_m(num_tokens), _block_n(widest)
    grid = (triton.cdiv(num_tokens, block_m), triton.cdiv(widest, block_n), num_slots * num_shards)
    _lora_expand_kernel[grid](
        **tensors,
        **strides(y, "y"),
        **strides(lora_b, "bl bn"),
        NUM_SHARDS=num_shards,
        OFFSET_1=ends[0],
        OFFSET_2=ends[1],
        OFFSET_3=ends[2],
        RANK=rank,
        RANK_PAD=max(16, triton.next_power_of_2(rank)),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        UPCAST_DOT=_upcast_dot(y.dtype),
    )
    return y
