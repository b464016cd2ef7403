"""RMSNorm, optionally fused with the residual add that precedes it in every decoder layer."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch_checks import (
    FLOAT_DTYPES,
    check_dtype,
    check_same_device,
    check_shape,
    check_unit_stride,
)


def rms_norm_reference(
    x: torch.Tensor,  # [num_tokens, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # [num_tokens, hidden]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(norm(x + residual) * weight, x + residual)``; the second is None without residual.

    The statistics are computed in fp32 whatever the input dtype, as Hugging Face does.
    """
    orig_dtype = x.dtype
    h = x.float()
    if residual is not None:
        h = h + residual.float()
        residual = h.to(orig_dtype)
    var = h.pow(2).mean(-1, keepdim=True)
    out = (h * torch.rsqrt(var + eps)).to(orig_dtype) * weight
    return out, residual


@triton.jit
def _rms_norm_kernel(
    out_ptr,  # [num_tokens, hidden], dtype of x promoted with weight
    residual_out_ptr,  # [num_tokens, hidden] x + residual in x's dtype (unused without residual)
    x_ptr,  # [num_tokens, hidden]
    residual_ptr,  # [num_tokens, hidden] (unused without residual)
    weight_ptr,  # [hidden]
    eps,
    stride_x,
    stride_r,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,  # HIDDEN rounded up to a power of two: one row per program
    HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)  # [BLOCK]
    mask = cols < HIDDEN
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)  # [BLOCK]
    h = x.to(tl.float32)
    if HAS_RESIDUAL:
        h += tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(residual_out_ptr + row * HIDDEN + cols, h.to(x.dtype), mask=mask)
    inv_rms = tl.rsqrt(tl.sum(h * h, axis=0) / HIDDEN + eps)
    # Round to x's dtype before the weight, as the reference (and Hugging Face) does.
    normed = (h * inv_rms).to(x.dtype).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * HIDDEN + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(
    x: torch.Tensor,  # [num_tokens, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # [num_tokens, hidden]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``rms_norm_reference`` in one pass; returns new tensors, the inputs are left untouched.

    Grid ``(num_tokens,)``: one program normalizes one row held whole in registers.
    """
    hidden = x.shape[-1]
    check_dtype("x", x, FLOAT_DTYPES)
    check_dtype("weight", weight, FLOAT_DTYPES)
    check_shape("weight", weight, (hidden,))
    check_unit_stride("weight", weight)
    check_same_device(x=x, weight=weight, **({} if residual is None else {"residual": residual}))
    rows = x.reshape(-1, hidden)
    check_unit_stride("x", rows)
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    residual_out = None
    if residual is not None:
        check_shape("residual", residual, tuple(x.shape))
        check_dtype("residual", residual, FLOAT_DTYPES)
        residual = residual.reshape(-1, hidden)
        check_unit_stride("residual", residual)
        residual_out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if rows.shape[0] == 0:
        return out, residual_out
    _rms_norm_kernel[(rows.shape[0],)](
        out_ptr=out,
        residual_out_ptr=residual_out if residual_out is not None else out,
        x_ptr=rows,
        residual_ptr=residual if residual is not None else rows,
        weight_ptr=weight,
        eps=eps,
        stride_x=rows.stride(0),
        stride_r=residual.stride(0) if residual is not None else 0,
        HIDDEN=hidden,
        BLOCK=triton.next_power_of_2(hidden),
        HAS_RESIDUAL=residual is not None,
    )
    return out, residual_out
