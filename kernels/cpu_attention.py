"""The CPU's paged attention: a C kernel, built on first use.

The PyTorch reference (kernels/attention.py) gathers each decode's cached K/V into a padded
copy and runs SDPA over it, so the context crosses memory three times; in a 32-row decode
step of SmolLM2 over ~300-token contexts that was ~160 of ~300 ms. ``cpu_paged_attention.c``
reads the cache in place through the block table, once. It serves every row in fp32:
decodes, speculative verifies and prefill chunks. A prefill chunk is cut into pieces of a
few query tokens, each attending only up to its own last position; one 512-token causal
prefill of SmolLM2's 9 query and 3 KV heads took 1.8 ms a layer there against 3.2 ms in
PyTorch's flash-attention SDPA (2 threads, AMD EPYC).

The kernel is compiled on first use, with the CPU's other C kernels (kernels/cpu_library.py);
where it cannot be built, the reference runs instead.
"""

from __future__ import annotations

import ctypes

import torch

from kernels.attention import PagedAttentionInputs
from kernels.kv_cache import cache_strides


def kernel_applies(batch: PagedAttentionInputs) -> bool:
    """Whether ``batch`` is one the C kernel serves: fp32 tensors in the CPU's memory,
    laid out as it reads them (caches at any strides ``cache_strides`` takes)."""
    tensors = (batch.query, batch.k_cache, batch.v_cache)
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and batch.query.is_contiguous()
        and cache_strides(batch.k_cache, batch.v_cache) is not None
        and batch.block_table.dtype == torch.int32
        and batch.block_table.stride(1) == 1
    )


def paged_attention_cpu(
    batch: PagedAttentionInputs, library: ctypes.CDLL
) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
    """``paged_attention_reference``'s result, every request through the C kernel (which
    reads the step's new K/V back from the cache, where they were stored first)."""
    out = torch.empty_like(batch.query)
    query, k_cache = batch.query, batch.k_cache
    num_heads, head_size = query.shape[1], query.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    assert out.is_contiguous() and out.shape == query.shape and out.dtype == torch.float32
    assert num_heads % num_kv_heads == 0, "every query head belongs to one KV head"
    query_start_loc = batch.query_start_loc.to(torch.int32).contiguous()
    seq_lens = batch.seq_lens.to(torch.int32).contiguous()
    strides = cache_strides(k_cache, batch.v_cache)
    assert strides is not None, "kernel_applies checked the caches' strides"
    status = library.kvbatch_paged_attention(
        query.data_ptr(),
        k_cache.data_ptr(),
        batch.v_cache.data_ptr(),
        batch.block_table.data_ptr(),
        batch.block_table.stride(0),
        query_start_loc.data_ptr(),
        seq_lens.data_ptr(),
        seq_lens.numel(),
        out.data_ptr(),
        num_heads,
        num_kv_heads,
        head_size,
        block_size,
        *strides,
        batch.scale,
        torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError("the CPU attention kernel could not allocate its scores")
    return out
