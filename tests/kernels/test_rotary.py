"""The Triton rotary embedding against ``rotary_embedding_reference`` (llama3-scaled table)."""

from __future__ import annotations

import pytest
import torch

from kernels.rotary import build_cos_sin_cache, rotary_embedding_reference, rotary_embedding_triton
from tests.kernels.common import DTYPES, assert_close

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_size"), [(4, 2, 16), (8, 1, 64), (3, 3, 128)]
)
def test_matches_reference(
    device: torch.device, dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_size: int
) -> None:
    cache = build_cos_sin_cache(head_size, 1024, 500000.0, LLAMA3_SCALING).to(device)
    positions = torch.randint(0, 1024, (9,), device=device)
    query = torch.randn(9, num_heads, head_size, device=device).to(dtype)
    key = torch.randn(9, num_kv_heads, head_size, device=device).to(dtype)
    q_out, k_out = rotary_embedding_triton(positions, query, key, cache)
    q_expected, k_expected = rotary_embedding_reference(positions, query, key, cache)
    assert_close(q_out, q_expected)
    assert_close(k_out, k_expected)


def test_views_into_a_fused_projection(device: torch.device) -> None:
    """q and k as strided views of one qkv output, as the attention layer passes them."""
    cache = build_cos_sin_cache(32, 64, 10000.0).to(device)
    qkv = torch.randn(6, (4 + 2 + 2) * 32, device=device)
    query, key = qkv[:, :128].view(6, 4, 32), qkv[:, 128:192].view(6, 2, 32)
    positions = torch.arange(6, device=device, dtype=torch.int32) + 50
    q_out, k_out = rotary_embedding_triton(positions, query, key, cache)
    q_expected, k_expected = rotary_embedding_reference(positions.long(), query, key, cache)
    assert_close(q_out, q_expected)
    assert_close(k_out, k_expected)


def test_rejects_bad_inputs(device: torch.device) -> None:
    cache = build_cos_sin_cache(16, 8, 10000.0).to(device)
    query = torch.randn(2, 2, 16, device=device)
    positions = torch.arange(2, device=device)
    with pytest.raises(ValueError, match="key"):
        rotary_embedding_triton(positions, query, query[:, :, :8], cache)
    with pytest.raises(ValueError, match="positions"):
        rotary_embedding_triton(positions[:1], query, query, cache)
    with pytest.raises(ValueError, match="cos_sin_cache"):
        rotary_embedding_triton(positions, query, query, cache[:, :8])
