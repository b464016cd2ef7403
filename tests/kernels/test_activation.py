"""The Triton SiLU-and-mul against ``silu_and_mul_reference``."""

from __future__ import annotations

import pytest
import torch

from kernels.activation import silu_and_mul_reference, silu_and_mul_triton
from tests.kernels.common import DTYPES, assert_close


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("intermediate", [160, 1500])  # 1500 spans two column blocks
def test_matches_reference(device: torch.device, dtype: torch.dtype, intermediate: int) -> None:
    x = (4 * torch.randn(5, 2 * intermediate, device=device)).to(dtype)
    assert_close(silu_and_mul_triton(x), silu_and_mul_reference(x))


def test_strided_rows(device: torch.device) -> None:
    x = torch.randn(4, 3 * 64, device=device)[:, : 2 * 64]
    assert_close(silu_and_mul_triton(x), silu_and_mul_reference(x))


def test_rejects_bad_inputs(device: torch.device) -> None:
    with pytest.raises(ValueError, match="even"):
        silu_and_mul_triton(torch.randn(2, 7, device=device))
    with pytest.raises(ValueError, match="dimensions"):
        silu_and_mul_triton(torch.randn(8, device=device))
