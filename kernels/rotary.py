"""Rotary position embedding (NeoX / Hugging Face "rotate_half" layout), with rope scaling.

The cos/sin table is built once per model: ``cos_sin_cache[pos] = [cos(pos * f) | sin(pos * f)]``
for the ``head_size // 2`` inverse frequencies ``f``; the forward pass only gathers rows by position.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def inverse_frequencies(
    head_size: int, base: float, rope_scaling: dict[str, Any] | None
) -> torch.Tensor:  # [head_size // 2] fp32
    """Inverse frequencies, adjusted for ``rope_scaling`` types ``linear`` and ``llama3``."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size))
    kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if kind in (None, "default"):
        return inv_freq.float()
    assert rope_scaling is not None
    factor = float(rope_scaling["factor"])
    if kind == "linear":
        return (inv_freq / factor).float()
    if kind == "llama3":
        # Long wavelengths are divided by `factor`, short ones kept, the band between blended.
        low = float(rope_scaling.get("low_freq_factor", 1.0))
        high = float(rope_scaling.get("high_freq_factor", 4.0))
        old_len = float(rope_scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        is_mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(is_mid, blended, scaled).float()
    raise ValueError(f"unsupported rope_scaling type {kind!r}")


def build_cos_sin_cache(
    head_size: int,
    max_position: int,
    base: float,
    rope_scaling: dict[str, Any] | None = None,
) -> torch.Tensor:  # [max_position, head_size] fp32: cos half, then sin half
    inv_freq = inverse_frequencies(head_size, base, rope_scaling)
    angles = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def rotary_embedding_reference(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_size]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    cos_sin_cache: torch.Tensor,  # [max_position, head_size] fp32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query and key by their positions; returns new tensors in the input dtype."""
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)  # [num_tokens, head_size // 2] each
    cos = torch.cat([cos, cos], dim=-1)[:, None, :]
    sin = torch.cat([sin, sin], dim=-1)[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return (x.float() * cos + rotated * sin).to(x.dtype)

    return rotate(query), rotate(key)
