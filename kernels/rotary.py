"""Rotary position embedding (NeoX / Hugging Face "rotate_half" layout), with rope scaling.

The cos/sin table is built once per model: ``cos_sin_cache[pos] = [cos(pos * f) | sin(pos * f)]``
for the ``head_size // 2`` inverse frequencies ``f``; the forward pass gathers rows by position.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from kernels import launch_checks as checks


def inverse_frequencies(
    head_size: int, base: float, rope_scaling: dict[str, Any] | None
) -> torch.Tensor:  # [head_size // 2] fp32
    """Inverse frequencies, adjusted for ``rope_scaling`` types ``linear`` and ``llama3``."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size))
    kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if kind in (None, "default"):
        return inv_freq.float()
    assert rope_scaling is not None
    factor = float(rope_scaling["factor"])
    if kind == "linear":
        return (inv_freq / factor).float()
    if kind == "llama3":
        # Long wavelengths are divided by `factor`, short ones kept, the band between blended.
        low = float(rope_scaling.get("low_freq_factor", 1.0))
        high = float(rope_scaling.get("high_freq_factor", 4.0))
        old_len = float(rope_scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        is_mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(is_mid, blended, scaled).float()
    raise ValueError(f"unsupported rope_scaling type {kind!r}")


def build_cos_sin_cache(
    head_size: int,
    max_position: int,
    base: float,
    rope_scaling: dict[str, Any] | None = None,
) -> torch.Tensor:  # [max_position, head_size] fp32: cos half, then sin half
    inv_freq = inverse_frequencies(head_size, base, rope_scaling)
    angles = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def rotary_embedding_reference(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_size]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    cos_sin_cache: torch.Tensor,  # [max_position, head_size] fp32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query and key by their positions; returns new tensors in the input dtype."""
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)  # [num_tokens, head_size // 2] each
    cos = torch.cat([cos, cos], dim=-1)[:, None, :]
    sin = torch.cat([sin, sin], dim=-1)[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return (x.float() * cos + rotated * sin).to(x.dtype)

    return rotate(query), rotate(key)


@triton.jit
def _rotate_heads(
    out_ptr,  # [num_tokens, heads, head_size], contiguous
    x_ptr,  # [num_tokens, heads, head_size]
    token,  # int64
    stride_t,
    stride_h,
    cos,  # [1, HALF_PAD] fp32
    sin,  # [1, HALF_PAD] fp32
    NUM_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,  # head_size // 2
    HALF_PAD: tl.constexpr,
):
    """``x * cos + rotate_half(x) * sin`` for every head of one token, halves kept apart."""
    heads = tl.arange(0, HEADS_PAD)[:, None]  # [HEADS_PAD, 1]
    dims = tl.arange(0, HALF_PAD)[None, :]  # [1, HALF_PAD]
    mask = (heads < NUM_HEADS) & (dims < HALF)  # [HEADS_PAD, HALF_PAD]
    src = x_ptr + token * stride_t + heads * stride_h + dims
    x1 = tl.load(src, mask=mask, other=0.0)  # [HEADS_PAD, HALF_PAD] first half
    x2 = tl.load(src + HALF, mask=mask, other=0.0)  # [HEADS_PAD, HALF_PAD] second half
    dst = out_ptr + token * (NUM_HEADS * 2 * HALF) + heads * (2 * HALF) + dims
    first = x1.to(tl.float32) * cos - x2.to(tl.float32) * sin
    second = x2.to(tl.float32) * cos + x1.to(tl.float32) * sin
    tl.store(dst, first.to(x1.dtype), mask=mask)
    tl.store(dst + HALF, second.to(x1.dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    query_out_ptr,  # [num_tokens, num_heads, head_size], contiguous
    key_out_ptr,  # [num_tokens, num_kv_heads, head_size], contiguous
    query_ptr,  # [num_tokens, num_heads, head_size]
    key_ptr,  # [num_tokens, num_kv_heads, head_size]
    positions_ptr,  # [num_tokens]
    cos_sin_cache_ptr,  # [max_position, head_size]: cos half, then sin half
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_cs,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,  # max(num_heads, num_kv_heads) rounded up to a power of two
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF_PAD)[None, :]  # [1, HALF_PAD]
    row = cos_sin_cache_ptr + pos * stride_cs + dims
    cos = tl.load(row, mask=dims < HALF, other=0.0).to(tl.float32)  # [1, HALF_PAD]
    sin = tl.load(row + HALF, mask=dims < HALF, other=0.0).to(tl.float32)  # [1, HALF_PAD]
    _rotate_heads(
        query_out_ptr,
        query_ptr,
        token,
        stride_qt,
        stride_qh,
        cos,
        sin,
        NUM_HEADS,
        HEADS_PAD,
        HALF,
        HALF_PAD,
    )
    _rotate_heads(
        key_out_ptr,
        key_ptr,
        token,
        stride_kt,
        stride_kh,
        cos,
        sin,
        NUM_KV_HEADS,
        HEADS_PAD,
        HALF,
        HALF_PAD,
    )


def rotary_embedding_triton(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_size]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    cos_sin_cache: torch.Tensor,  # [max_position, head_size] fp32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rotary_embedding_reference`` in one launch; returns new contiguous tensors.

    Grid ``(num_tokens,)``: one program gathers its token's cos/sin row once and rotates all
    query and key heads with it. Positions are not range-checked (that would need a host sync).
    """
    checks.check_rank("query", query, 3)
    checks.check_rank("key", key, 3)
    checks.check_rank("cos_sin_cache", cos_sin_cache, 2)
    num_tokens, num_heads, head_size = query.shape
    checks.check_shape("positions", positions, (num_tokens,))
    checks.check_shape("cos_sin_cache", cos_sin_cache, (cos_sin_cache.shape[0], head_size))
    if key.shape[0] != num_tokens or key.shape[2] != head_size:
        raise ValueError(f"key shape {tuple(key.shape)} does not match query {tuple(query.shape)}")
    if head_size % 2:
        raise ValueError(f"head_size {head_size} must be even for rotate_half")
    checks.check_dtype("positions", positions, checks.INDEX_DTYPES)
    for name, t in (("query", query), ("key", key), ("cos_sin_cache", cos_sin_cache)):
        checks.check_dtype(name, t, checks.FLOAT_DTYPES)
        checks.check_unit_stride(name, t)
    tensors = checks.pointers(
        positions=positions, query=query, key=key, cos_sin_cache=cos_sin_cache
    )
    query_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    key_out = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    if num_tokens == 0:
        return query_out, key_out
    _rotary_kernel[(num_tokens,)](
        query_out_ptr=query_out,
        key_out_ptr=key_out,
        **tensors,
        **checks.strides(query, "qt qh"),
        **checks.strides(key, "kt kh"),
        **checks.strides(cos_sin_cache, "cs"),
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=key.shape[1],
        HEADS_PAD=triton.next_power_of_2(max(num_heads, key.shape[1])),
        HALF=head_size // 2,
        HALF_PAD=triton.next_power_of_2(head_size // 2),
    )
    return query_out, key_out
