"""The Triton KV-cache store against ``store_kv_cache_reference``."""

from __future__ import annotations

import pytest
import torch

from kernels.kv_cache import store_kv_cache_reference, store_kv_cache_triton
from tests.kernels.common import DTYPES


def _slots(num_tokens: int, num_slots: int, first_slot: int, device: torch.device) -> torch.Tensor:
    """Distinct random slots, every third token marked -1 (padding)."""
    slots = torch.randperm(num_slots, device=device)[:num_tokens] + first_slot
    slots[::3] = -1
    return slots


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_kv_heads", "head_size", "block_size"), [(2, 16, 16), (3, 64, 32)])
def test_matches_reference(
    device: torch.device, dtype: torch.dtype, num_kv_heads: int, head_size: int, block_size: int
) -> None:
    num_tokens, num_blocks = 20, 6
    key = torch.randn(num_tokens, num_kv_heads, head_size, device=device).to(dtype)
    value = torch.randn(num_tokens, num_kv_heads, head_size, device=device).to(dtype)
    shape = (num_blocks, block_size, num_kv_heads, head_size)
    k_cache = torch.randn(shape, device=device).to(dtype)
    v_cache = torch.randn(shape, device=device).to(dtype)
    slots = _slots(num_tokens, num_blocks * block_size, 0, device)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    store_kv_cache_reference(key, value, k_expected, v_expected, slots)
    store_kv_cache_triton(key, value, k_cache, v_cache, slots)
    torch.testing.assert_close(k_cache, k_expected, atol=0, rtol=0)
    torch.testing.assert_close(v_cache, v_expected, atol=0, rtol=0)


def test_strided_key_value_and_cast(device: torch.device) -> None:
    """K and V as views into a fused fp32 projection, stored into a bf16 cache.

    The CPU interpreter truncates fp32 to bf16 where CUDA rounds to nearest: one bf16 ulp.
    """
    kv = torch.randn(9, 2 * 2 * 32, device=device)
    key, value = kv[:, :64].view(9, 2, 32), kv[:, 64:].view(9, 2, 32)
    k_cache = torch.zeros(4, 16, 2, 32, dtype=torch.bfloat16, device=device)
    v_cache = torch.zeros_like(k_cache)
    slots = _slots(9, 64, 0, device)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    store_kv_cache_reference(key, value, k_expected, v_expected, slots)
    store_kv_cache_triton(key, value, k_cache, v_cache, slots)
    rtol = 0.0 if device.type == "cuda" else 2**-7
    torch.testing.assert_close(k_cache, k_expected, atol=0, rtol=rtol)
    torch.testing.assert_close(v_cache, v_expected, atol=0, rtol=rtol)


@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_slots_past_int32_element_offsets(device: torch.device, slot_dtype: torch.dtype) -> None:
    """Slots whose element offset exceeds 2**31 (a lazily reserved 4 GiB fp16 cache)."""
    block_size, num_kv_heads, head_size = 16, 2, 64
    first_block = 2**31 // (block_size * num_kv_heads * head_size)
    shape = (first_block + 4, block_size, num_kv_heads, head_size)
    try:
        k_cache = torch.empty(shape, dtype=torch.float16, device=device)
        v_cache = torch.empty(shape, dtype=torch.float16, device=device)
    except (RuntimeError, MemoryError) as exc:
        pytest.skip(f"cannot reserve a 4 GiB cache here: {exc}")
    k_cache[first_block:] = 0
    v_cache[first_block:] = 0
    key = torch.randn(10, num_kv_heads, head_size, device=device).half()
    value = torch.randn(10, num_kv_heads, head_size, device=device).half()
    slots = _slots(10, 4 * block_size, first_block * block_size, device).to(slot_dtype)
    store_kv_cache_triton(key, value, k_cache, v_cache, slots)
    written = k_cache.view(-1, num_kv_heads, head_size)
    kept = slots >= 0
    torch.testing.assert_close(written[slots[kept]], key[kept], atol=0, rtol=0)
    torch.testing.assert_close(v_cache.view_as(written)[slots[kept]], value[kept], atol=0, rtol=0)
    untouched = torch.ones(first_block * block_size + 4 * block_size, dtype=torch.bool)
    untouched[slots[kept].cpu()] = False
    assert not written[first_block * block_size :][untouched[first_block * block_size :]].any()


def test_rejects_bad_inputs(device: torch.device) -> None:
    key = torch.randn(4, 2, 16, device=device)
    cache = torch.zeros(2, 16, 2, 16, device=device)
    slots = torch.arange(4, device=device)
    with pytest.raises(ValueError, match="heads"):
        store_kv_cache_triton(key[:, :1], key[:, :1], cache, cache.clone(), slots)
    with pytest.raises(ValueError, match="slot_mapping"):
        store_kv_cache_triton(key, key, cache, cache.clone(), slots.float())
    with pytest.raises(ValueError, match="slot_mapping"):
        store_kv_cache_triton(key, key, cache, cache.clone(), slots[:3])
