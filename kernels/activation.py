"""The gated activation of Llama-style MLPs: ``silu(gate) * up`` on a fused gate/up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    """``x`` is ``[num_tokens, 2 * intermediate]`` (gate first, then up); returns ``[.., intermediate]``."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
