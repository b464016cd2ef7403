"""LoRA adapter slots inside the model: every adaptable projection gets a stack of ``A`` and
``B`` matrices, one per device slot, and adds each token's delta after its base GEMM.

One slot holds one adapter at a time (``engine.lora_slots`` decides which); slot contents are
written by ``write_slot`` and read by the batched kernels through a per-step ``LoRAMapping``::

    qkv_proj (3 shards):  a [num_slots, 3 * R, hidden]       b [num_slots, q + 2 kv, R]
    gate_up_proj (2):     a [num_slots, 2 * R, hidden]       b [num_slots, 2 * inter, R]
    o_proj, down_proj:    a [num_slots, R, in]                b [num_slots, out, R]

Shard ``s`` of ``a`` is rows ``s*R .. s*R + r`` (an adapter of rank ``r <= R``, zero beyond);
its ``b`` is the shard's rows of the fused output, scaled by the adapter's ``alpha / r``.
A projection the adapter does not train stays zero in its slot: a zero delta.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from engine.models.layers import Linear
from kernels import lora_expand, lora_shrink

if TYPE_CHECKING:
    from engine.models.llama import LlamaForCausalLM

# Our fused projections that take LoRA deltas, and the checkpoint modules each one fuses.
LORA_MODULES: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}


@dataclass(slots=True)
class LoRAMapping:
    """One step's tokens grouped by adapter slot (see ``kernels.lora``).

    ``active`` is False when no token of an eager step has an adapter, so the projections skip
    the LoRA launches; a CUDA graph's step is always active, because the graph replays
    whatever kernels it was captured with.
    """

    sorted_token_ids: torch.Tensor  # [num_tokens] int32: adapter tokens by slot, then the rest
    slot_start: torch.Tensor  # [num_slots + 1] int32
    active: bool


def build_mapping_arrays(
    token_slots: Sequence[int] | np.ndarray, num_slots: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted_token_ids, slot_start)`` of each token's slot (-1: the base model)::

    [1, -1, 0, 1] -> sorted [2, 0, 3, 1], slot_start [0, 1, 3]   (token 1 last, in no run)
    """
    slots = np.asarray(token_slots, dtype=np.int64)
    assert slots.size == 0 or int(slots.max()) < num_slots
    keys = np.where(slots < 0, num_slots, slots)
    sorted_ids = np.argsort(keys, kind="stable").astype(np.int32)
    counts = np.bincount(keys, minlength=num_slots + 1)[:num_slots]
    slot_start = np.zeros(num_slots + 1, dtype=np.int32)
    np.cumsum(counts, out=slot_start[1:])
    return sorted_ids, slot_start


class LoRAContext:
    """What the model's LoRA projections share: the current step's mapping."""

    def __init__(self, num_slots: int, max_rank: int) -> None:
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.mapping: LoRAMapping | None = None


class LinearLoRA(nn.Module):
    """The slot stacks of one fused projection; ``add_delta`` applies them to its output."""

    def __init__(self, linear: Linear, context: LoRAContext) -> None:
        super().__init__()
        num_shards = len(linear.shard_sizes)
        out_features, in_features = linear.weight.shape
        rank = context.max_rank
        like = linear.weight
        self.context = context
        self.in_features = in_features
        self.shard_sizes = list(linear.shard_sizes)
        self.shard_offsets = tuple(int(x) for x in np.cumsum([0, *linear.shard_sizes]))
        self.a: torch.Tensor
        self.b: torch.Tensor
        a = torch.zeros(context.num_slots, num_shards * rank, in_features, dtype=like.dtype)
        b = torch.zeros(context.num_slots, out_features, rank, dtype=like.dtype)
        self.register_buffer("a", a.to(like.device), persistent=False)
        self.register_buffer("b", b.to(like.device), persistent=False)

    def add_delta(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mapping = self.context.mapping
        if mapping is None or not mapping.active:
            return y
        x2 = x.reshape(-1, self.in_features)
        shrunk = lora_shrink(x2, self.a, mapping.sorted_token_ids, mapping.slot_start)
        y2 = y.reshape(-1, y.shape[-1])
        lora_expand(
            y2, shrunk, self.b, self.shard_offsets, mapping.sorted_token_ids, mapping.slot_start
        )
        return y


def lora_linears(model: nn.Module) -> Iterator[tuple[str, Linear]]:
    """``(name, module)`` of every projection that takes LoRA deltas, in model order."""
    for name, module in model.named_modules():
        if isinstance(module, Linear) and name.rsplit(".", 1)[-1] in LORA_MODULES:
            yield name, module


def attach_lora(model: LlamaForCausalLM, num_slots: int, max_rank: int) -> LoRAContext:
    """Give every adaptable projection of ``model`` zeroed slot stacks; return their context."""
    context = LoRAContext(num_slots, max_rank)
    for _, linear in lora_linears(model):
        linear.lora = LinearLoRA(linear, context)
    model.lora_context = context
    return context


@torch.no_grad()
def write_slot(
    model: nn.Module, slot: int, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """Copy an adapter's padded ``(a, b)`` per projection (``engine.lora_adapter``) into
    ``slot``; projections it lacks are zeroed. Non-blocking from pinned host memory on CUDA:
    the copies run on the stream before the next forward pass."""
    for name, linear in lora_linears(model):
        lora = linear.lora
        assert isinstance(lora, LinearLoRA)
        if name in weights:
            a, b = weights[name]
            lora.a[slot].copy_(a, non_blocking=True)
            lora.b[slot].copy_(b, non_blocking=True)
        else:
            lora.a[slot].zero_()
            lora.b[slot].zero_()
