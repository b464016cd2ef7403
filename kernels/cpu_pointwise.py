"""The small per-token operations of a layer, on the CPU in fp32, through ``cpu_pointwise.c``.

Each function returns what its reference returns (``rms_norm_reference``,
``rotary_embedding_reference``, ``store_kv_cache_reference``, ``silu_and_mul_reference``),
in one C call instead of several tensor ops: see the C file for why. ``pointwise_applies``
says which tensors they take: fp32 in the CPU's memory, each row's elements contiguous.
"""

from __future__ import annotations

import ctypes

import torch

from kernels.kv_cache import cache_strides


def pointwise_applies(*tensors: torch.Tensor) -> bool:
    # Checked on every call of every layer: the cheapest attributes (``is_cpu`` rather than
    # ``device.type``, which builds a device object).
    for t in tensors:
        if not t.is_cpu or t.dtype is not torch.float32 or t.stride(-1) != 1:
            return False
    return True


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[rows, last]`` with a row stride (a copy only if its rows are not evenly
    spaced)."""
    flat = t.reshape(-1, t.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def rms_norm_cpu(
    x: torch.Tensor,  # [num_tokens, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None,  # [num_tokens, hidden]
    library: ctypes.CDLL,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    rows = _rows(x)
    hidden = rows.shape[1]
    weight = weight.contiguous()
    out = torch.empty(rows.shape)
    residual_rows = None if residual is None else _rows(residual)
    residual_out = None if residual is None else torch.empty(rows.shape)
    library.kvbatch_rms_norm(
        rows.data_ptr(),
        rows.stride(0),
        None if residual_rows is None else residual_rows.data_ptr(),
        0 if residual_rows is None else residual_rows.stride(0),
        weight.data_ptr(),
        eps,
        out.data_ptr(),
        None if residual_out is None else residual_out.data_ptr(),
        rows.shape[0],
        hidden,
        torch.get_num_threads(),
    )
    return out.view(x.shape), None if residual_out is None else residual_out.view(x.shape)


def rotary_embedding_cpu(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_size]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    cos_sin_cache: torch.Tensor,  # [max_position, head_size] fp32
    library: ctypes.CDLL,
) -> tuple[torch.Tensor, torch.Tensor]:  # new contiguous tensors, query's and key's shapes
    tokens, heads, head_size = query.shape
    kv_heads = key.shape[1]
    assert query.stride(1) == head_size and key.stride(1) == head_size, "heads side by side"
    positions = positions.to(torch.int64).contiguous()
    cos_sin = cos_sin_cache.contiguous()
    q_out = torch.empty(query.shape)
    k_out = torch.empty(key.shape)
    library.kvbatch_rotary(
        positions.data_ptr(),
        query.data_ptr(),
        query.stride(0),
        key.data_ptr(),
        key.stride(0),
        cos_sin.data_ptr(),
        q_out.data_ptr(),
        k_out.data_ptr(),
        tokens,
        heads,
        kv_heads,
        head_size,
        torch.get_num_threads(),
    )
    return q_out, k_out


def store_kv_cache_cpu(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size], cache_strides
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64, -1 = skip
    library: ctypes.CDLL,
) -> None:
    num_blocks, block_size, kv_heads, head_size = k_cache.shape
    strides = cache_strides(k_cache, v_cache)
    assert strides is not None, "the caller checked the caches' strides"
    assert key.stride(1) == key.shape[2] and value.stride(1) == value.shape[2]
    slots = slot_mapping.to(torch.int64).contiguous()
    beyond = library.kvbatch_store_kv(
        key.data_ptr(),
        key.stride(0),
        value.data_ptr(),
        value.stride(0),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        slots.data_ptr(),
        key.shape[0],
        kv_heads,
        head_size,
        block_size,
        num_blocks,
        *strides,
    )
    if beyond:
        raise IndexError(f"{beyond} slot(s) past the KV cache's {k_cache.shape[0]} blocks")


def silu_and_mul_cpu(x: torch.Tensor, library: ctypes.CDLL) -> torch.Tensor:
    """``x`` ``[num_tokens, 2 * intermediate]``, gate then up -> ``[num_tokens, intermediate]``."""
    rows = _rows(x)
    inter = rows.shape[1] // 2
    out = torch.empty(rows.shape[0], inter)
    library.kvbatch_silu_and_mul(
        rows.data_ptr(),
        rows.stride(0),
        out.data_ptr(),
        rows.shape[0],
        inter,
        torch.get_num_threads(),
    )
    return out.view(*x.shape[:-1], inter)
