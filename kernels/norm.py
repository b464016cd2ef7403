"""RMSNorm, optionally fused with the residual add that precedes it in every decoder layer."""

from __future__ import annotations

import torch


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
