"""Choosing between the Triton kernels and the PyTorch references.

``auto`` (the default, or ``KVBATCH_KERNELS=auto``) runs Triton on CUDA tensors and the
reference elsewhere; ``triton`` forces the kernels (on the CPU they then need
``TRITON_INTERPRET=1``); ``torch`` forces the references.
"""

from __future__ import annotations

import enum
import os

import torch

from kernels.activation import silu_and_mul_reference
from kernels.attention import paged_attention_reference
from kernels.kv_cache import store_kv_cache_reference
from kernels.norm import rms_norm_reference
from kernels.rotary import rotary_embedding_reference


class Backend(enum.StrEnum):
    AUTO = "auto"
    TRITON = "triton"
    TORCH = "torch"


_backend = Backend(os.environ.get("KVBATCH_KERNELS", "auto"))


def set_backend(backend: Backend | str) -> None:
    global _backend
    _backend = Backend(backend)


def get_backend() -> Backend:
    return _backend


def use_triton(t: torch.Tensor) -> bool:
    if _backend is Backend.AUTO:
        return t.is_cuda
    return _backend is Backend.TRITON


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    max_query_len: int,
    max_seq_len: int,
    scale: float,
) -> torch.Tensor:
    args = (query, k_cache, v_cache, block_table, query_start_loc, seq_lens)
    return paged_attention_reference(*args, max_query_len, max_seq_len, scale)


def store_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    store_kv_cache_reference(key, value, k_cache, v_cache, slot_mapping)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    return rms_norm_reference(x, weight, eps, residual)


def rotary_embedding(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return rotary_embedding_reference(positions, query, key, cos_sin_cache)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return silu_and_mul_reference(x)
