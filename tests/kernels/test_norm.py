"""The Triton RMSNorm (with and without the fused residual add) against the reference."""

from __future__ import annotations

import pytest
import torch

from kernels.norm import rms_norm_reference, rms_norm_triton
from tests.kernels.common import DTYPES, TOLERANCES, assert_close


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [16, 100, 2048])
@pytest.mark.parametrize("with_residual", [False, True])
def test_matches_reference(
    device: torch.device, dtype: torch.dtype, hidden: int, with_residual: bool
) -> None:
    x = (3 * torch.randn(7, hidden, device=device)).to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)
    residual = torch.randn(7, hidden, device=device).to(dtype) if with_residual else None
    x_before = x.clone()
    out, new_residual = rms_norm_triton(x, weight, 1e-6, residual)
    expected, expected_residual = rms_norm_reference(x, weight, 1e-6, residual)
    assert_close(out, expected)
    if expected_residual is None:
        assert new_residual is None
    else:
        assert new_residual is not None
        assert_close(new_residual, expected_residual)
    assert torch.equal(x, x_before)


def test_fp32_weight_promotes_like_the_reference(device: torch.device) -> None:
    x = torch.randn(3, 64, device=device).to(torch.bfloat16)
    weight = torch.rand(64, device=device)
    out, _ = rms_norm_triton(x, weight, 1e-5)
    expected, _ = rms_norm_reference(x, weight, 1e-5)
    assert out.dtype == expected.dtype == torch.float32
    # The normalized row is rounded to bf16 before the weight: bf16 tolerances apply.
    tol = TOLERANCES[torch.bfloat16]
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


def test_leading_dims_and_strided_rows(device: torch.device) -> None:
    """Per-head q/k norms see ``[num_tokens, heads, head_dim]`` views into a fused projection."""
    qkv = torch.randn(5, 3 * 4 * 16, device=device)
    q = qkv[:, : 4 * 16].view(5, 4, 16)
    weight = torch.rand(16, device=device)
    out, _ = rms_norm_triton(q, weight, 1e-6)
    assert_close(out, rms_norm_reference(q, weight, 1e-6)[0])


def test_rejects_bad_inputs(device: torch.device) -> None:
    x = torch.randn(2, 32, device=device)
    with pytest.raises(ValueError, match="weight"):
        rms_norm_triton(x, torch.ones(16, device=device), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm_triton(x, torch.ones(32, device=device), 1e-6, x[:1])
    with pytest.raises(ValueError, match="x"):
        rms_norm_triton(x.long(), torch.ones(32, device=device), 1e-6)
