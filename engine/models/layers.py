"""The few weight-holding layers the decoders are made of.

Parameters are created with ``torch.empty`` (no random init: the loader overwrites every one)
on whatever device and dtype are current while the model is built, so a model is allocated once,
where it will run, in the dtype it will run in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kernels import rms_norm

if TYPE_CHECKING:
    from engine.models.lora import LinearLoRA
    from engine.models.packed_weights import PackedWeight


def _empty(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


class Linear(nn.Module):
    """``y = x W^T + b``, where ``W`` may stack several checkpoint matrices along its rows.

    ``shard_sizes`` names the stacked parts in order, e.g. q/k/v fused into one projection::

        weight rows:  [ 0 .. q ) [ q .. q+kv ) [ q+kv .. q+2kv )
                        shard 0      shard 1        shard 2

    The loader copies checkpoint matrix ``i`` into ``rows(i)``; one GEMM then replaces three.
    ``lora`` (set by ``engine.models.lora.attach_lora``) adds each token's adapter delta;
    ``packed`` (set by ``engine.models.packed_weights.pack_weights``, fp32 on the CPU) holds
    the weight again, packed for the CPU's matmul kernel.
    """

    def __init__(self, in_features: int, shard_sizes: list[int], bias: bool) -> None:
        super().__init__()
        self.shard_sizes = shard_sizes
        self.weight = _empty(sum(shard_sizes), in_features)
        self.bias = _empty(sum(shard_sizes)) if bias else None
        self.lora: LinearLoRA | None = None
        self.packed: PackedWeight | None = None

    def rows(self, shard: int) -> slice:
        start = sum(self.shard_sizes[:shard])
        return slice(start, start + self.shard_sizes[shard])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            y = F.linear(x, self.weight, self.bias)
        else:
            y = self.packed.linear(x, self.bias)
        return y if self.lora is None else self.lora.add_delta(x, y)


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = _empty(vocab_size, hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _empty(size)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(norm(x + residual), x + residual)``: see ``kernels.rms_norm``."""
        return rms_norm(x, self.weight, self.eps, residual)
