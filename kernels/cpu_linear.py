"""fp32 projections on the CPU through ``cpu_linear.c``: the weight packed once into panels.

``pack_linear`` lays a ``[out, in]`` weight out as the kernel reads it (panels of
``panel_width`` output columns, the C file's header draws it); ``panel_linear`` computes
``x W^T + b`` from that copy. The reference is ``F.linear``: the products agree to fp32
rounding, summed in another order.
"""

from __future__ import annotations

import ctypes

import torch


def pack_linear(weight: torch.Tensor, library: ctypes.CDLL) -> torch.Tensor:
    """``weight`` ``[out, in]`` fp32 -> its panels, a flat fp32 tensor (the last panel
    zero-padded to the panel width)."""
    assert weight.dim() == 2 and weight.dtype == torch.float32 and weight.device.type == "cpu"
    weight = weight.contiguous()
    out_features, in_features = weight.shape
    width = library.kvbatch_linear_panel_width()
    panels = torch.empty(-(-out_features // width) * width * in_features)
    library.kvbatch_pack_linear(weight.data_ptr(), out_features, in_features, panels.data_ptr())
    return panels


def panel_linear(
    x: torch.Tensor,  # [..., in] fp32
    panels: torch.Tensor,  # pack_linear of a weight [out, in]
    out_features: int,
    library: ctypes.CDLL,
    bias: torch.Tensor | None = None,  # [out] fp32
) -> torch.Tensor:  # [..., out]
    in_features = x.shape[-1]
    rows = x.reshape(-1, in_features)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    assert rows.dtype == torch.float32 and panels.numel() % in_features == 0
    if bias is not None:
        assert bias.shape == (out_features,) and bias.dtype == torch.float32
        bias = bias.contiguous()
    out = torch.empty(rows.shape[0], out_features)
    if rows.shape[0] > 0:
        library.kvbatch_linear(
            rows.data_ptr(),
            rows.shape[0],
            in_features,
            rows.stride(0),
            panels.data_ptr(),
            out_features,
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            out_features,
            torch.get_num_threads(),
        )
    return out.view(*x.shape[:-1], out_features)
