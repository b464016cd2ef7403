"""Writing new tokens' keys and values into the paged KV cache.

``slot_mapping[t] = block_id * block_size + offset`` names the cache slot of token ``t``;
a negative slot marks a padded row that must not be written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import launch_checks as checks


def cache_strides(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int, int] | None:
    """The caches' (block, position, head) strides in elements where the CPU's C kernels can
    address them (cpu_paged_attention.c): both alike, with head_size's stride 1; else None.
    The engine's CPU caches are head-major (``model_runner``), others contiguous."""
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        return None
    return k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)


def store_kv_cache_reference(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    slot_mapping: torch.Tensor,  # [num_tokens] int64, -1 = skip
) -> None:
    if bool((slot_mapping < 0).any()):
        keep = slot_mapping >= 0
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    # A (block, offset) index reaches a cache at any strides (the CPU's are head-major).
    slots = slot_mapping.long()
    blocks, offsets = slots // k_cache.shape[1], slots % k_cache.shape[1]
    k_cache[blocks, offsets] = key.to(k_cache.dtype)
    v_cache[blocks, offsets] = value.to(v_cache.dtype)


@triton.jit
def _store_one(
    src_ptr,  # [num_tokens, num_kv_heads, head_size]
    cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_size]
    src_offsets,  # [HEADS_PAD, HEAD_PAD]
    cache_offsets,  # [HEADS_PAD, HEAD_PAD] int64
    mask,  # [HEADS_PAD, HEAD_PAD]
):
    x = tl.load(src_ptr + src_offsets, mask=mask)
    tl.store(cache_ptr + cache_offsets, x.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_cache_kernel(
    key_ptr,  # [num_tokens, num_kv_heads, head_size]
    value_ptr,  # [num_tokens, num_kv_heads, head_size]
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_size]
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_size], strides of k_cache
    slot_mapping_ptr,  # [num_tokens]
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cb,
    stride_cs,
    stride_ch,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEADS_PAD: tl.constexpr,  # NUM_KV_HEADS rounded up to a power of two
    HEAD_PAD: tl.constexpr,  # HEAD_SIZE rounded up to a power of two
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    heads = tl.arange(0, HEADS_PAD)  # [HEADS_PAD]
    dims = tl.arange(0, HEAD_PAD)  # [HEAD_PAD]
    mask = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_SIZE)
    # int64 slot: block_id * stride_cb overflows int32 for large caches.
    cache_offsets = (
        (slot // BLOCK_SIZE) * stride_cb
        + (slot % BLOCK_SIZE) * stride_cs
        + heads[:, None] * stride_ch
        + dims[None, :]
    )  # [HEADS_PAD, HEAD_PAD] int64
    token64 = token.to(tl.int64)
    k_offsets = token64 * stride_kt + heads[:, None] * stride_kh + dims[None, :]
    v_offsets = token64 * stride_vt + heads[:, None] * stride_vh + dims[None, :]
    _store_one(key_ptr, k_cache_ptr, k_offsets, cache_offsets, mask)
    _store_one(value_ptr, v_cache_ptr, v_offsets, cache_offsets, mask)


def store_kv_cache_triton(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    slot_mapping: torch.Tensor,  # [num_tokens] int64, -1 = skip
) -> None:
    """In-place store with the semantics of ``store_kv_cache_reference``.

    Grid ``(num_tokens,)``: one program copies all KV heads of one token's key and value;
    a program whose slot is negative writes nothing.
    """
    checks.check_rank("key", key, 3)
    checks.check_rank("k_cache", k_cache, 4)
    checks.check_shape("value", value, tuple(key.shape))
    checks.check_shape("slot_mapping", slot_mapping, (key.shape[0],))
    if key.shape[1:] != k_cache.shape[2:]:
        raise ValueError(f"key heads {tuple(key.shape[1:])} != cache {tuple(k_cache.shape[2:])}")
    checks.check_dtype("key", key, checks.FLOAT_DTYPES)
    checks.check_dtype("k_cache", k_cache, checks.FLOAT_DTYPES)
    checks.check_dtype("slot_mapping", slot_mapping, checks.INDEX_DTYPES)
    tensors = checks.pointers(
        key=key, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping
    )
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError("k_cache and v_cache must have the same shape and strides")
    if v_cache.dtype != k_cache.dtype or value.dtype != key.dtype:
        raise ValueError("key/value and k_cache/v_cache must share their dtypes")
    for name, t in (("key", key), ("value", value), ("k_cache", k_cache)):
        checks.check_unit_stride(name, t)
    num_tokens, num_kv_heads, head_size = key.shape
    if num_tokens == 0:
        return
    _store_kv_cache_kernel[(num_tokens,)](
        **tensors,
        **checks.strides(key, "kt kh"),
        **checks.strides(value, "vt vh"),
        **checks.strides(k_cache, "cb cs ch"),
        NUM_KV_HEADS=num_kv_heads,
        HEAD_SIZE=head_size,
        BLOCK_SIZE=k_cache.shape[1],
        HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HEAD_PAD=triton.next_power_of_2(head_size),
    )
