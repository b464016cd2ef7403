"""The gated activation of Llama-style MLPs: ``silu(gate) * up`` on a fused gate/up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.launch_checks import FLOAT_DTYPES, check_dtype, check_rank, check_unit_stride


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    """``x`` is ``[num_tokens, 2 * intermediate]``, gate then up; returns ``[.., intermediate]``."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _silu_and_mul_kernel(
    out_ptr,  # [num_tokens, intermediate], contiguous
    x_ptr,  # [num_tokens, 2 * intermediate]: gate columns, then up columns
    stride_x,
    INTERMEDIATE: tl.constexpr,
    BLOCK: tl.constexpr,  # columns per program
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = cols < INTERMEDIATE
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)  # [BLOCK]
    up = tl.load(x_ptr + row * stride_x + INTERMEDIATE + cols, mask=mask, other=0.0)  # [BLOCK]
    g = gate.to(tl.float32)
    # Round silu(gate) to the input dtype before the product, as the two PyTorch ops do.
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    out = (act * up.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * INTERMEDIATE + cols, out, mask=mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """``silu_and_mul_reference`` for ``[num_tokens, 2 * intermediate]`` input.

    Grid ``(num_tokens, cdiv(intermediate, BLOCK))``: each program handles ``BLOCK`` columns
    of one row, reading the gate and the matching up column.
    """
    check_rank("x", x, 2)
    check_dtype("x", x, FLOAT_DTYPES)
    check_unit_stride("x", x)
    num_tokens, width = x.shape
    if width % 2:
        raise ValueError(f"x's last dimension {width} must be even (gate and up halves)")
    intermediate = width // 2
    out = torch.empty(num_tokens, intermediate, dtype=x.dtype, device=x.device)
    if num_tokens == 0 or intermediate == 0:
        return out
    block = min(1024, triton.next_power_of_2(intermediate))
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(intermediate, block))](
        out_ptr=out,
        x_ptr=x,
        stride_x=x.stride(0),
        INTERMEDIATE=intermediate,
        BLOCK=block,
    )
    return out
