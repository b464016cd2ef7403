"""Choosing between the Triton kernels and the PyTorch references.

``auto`` (the default, or ``KVBATCH_KERNELS=auto``) runs Triton on CUDA tensors and the
reference elsewhere, except on fp32 CPU tensors where this machine can build the C kernels
(kernels/cpu_library.py): attention (kernels/cpu_attention.py: decodes, speculative
verifies and prefill chunks) and the per-token operations (kernels/cpu_pointwise.py) run
those; ``triton`` forces the Triton kernels (on the CPU they then need
``TRITON_INTERPRET=1`` set before ``kernels`` is imported); ``torch`` forces the references.
"""

from __future__ import annotations

import ctypes
import enum
import os

import torch
import triton

from kernels.activation import silu_and_mul_reference, silu_and_mul_triton
from kernels.attention import PagedAttentionInputs, ReferencePlan, paged_attention_reference
from kernels.attention_triton import paged_attention_triton
from kernels.cpu_attention import kernel_applies, paged_attention_cpu
from kernels.cpu_library import kernel_library
from kernels.cpu_pointwise import (
    pointwise_applies,
    rms_norm_cpu,
    rotary_embedding_cpu,
    silu_and_mul_cpu,
    store_kv_cache_cpu,
)
from kernels.kv_cache import cache_strides, store_kv_cache_reference, store_kv_cache_triton
from kernels.lora import (
    lora_expand_reference,
    lora_expand_triton,
    lora_shrink_reference,
    lora_shrink_triton,
)
from kernels.norm import rms_norm_reference, rms_norm_triton
from kernels.rotary import rotary_embedding_reference, rotary_embedding_triton
from kernels.sampling import sample_gumbel_reference, sample_gumbel_triton


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
    """Whether ``t``'s operation runs the Triton kernel under the current backend.

    Forcing Triton on CPU tensors without the interpreter would hand host pointers to a GPU
    launch; that raises here with the fix rather than failing inside Triton.
    """
    if _backend is Backend.AUTO:
        return t.is_cuda
    if _backend is Backend.TORCH:
        return False
    if not t.is_cuda and not triton.knobs.runtime.interpret:
        raise RuntimeError(
            "backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before importing kernels"
        )
    return True


def paged_attention(
    batch: PagedAttentionInputs,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    plan: ReferencePlan | None = None,
) -> torch.Tensor:
    """``key``/``value``: the step's new K/V, already stored; the PyTorch path attends to
    them directly for chunks with no cached context (the Triton kernel reads the cache).
    ``plan``: ``plan_attention`` of this step's metadata, shared by its layers (PyTorch path)."""
    if use_triton(batch.query):
        return paged_attention_triton(batch)
    library = _cpu_attention_kernel(batch)
    if library is not None:
        return paged_attention_cpu(batch, library)
    return paged_attention_reference(batch, key=key, value=value, plan=plan)


def attention_reads_plan(batch: PagedAttentionInputs) -> bool:
    """Whether ``paged_attention`` runs the PyTorch reference for ``batch``: the one path
    that reads a ``plan`` (the Triton and C kernels take the metadata as it is)."""
    return not use_triton(batch.query) and _cpu_attention_kernel(batch) is None


def _cpu_attention_kernel(batch: PagedAttentionInputs) -> ctypes.CDLL | None:
    """The C kernels, where the backend is ``auto`` and the attention kernel takes
    ``batch``."""
    if _backend is not Backend.AUTO or not kernel_applies(batch):
        return None
    return kernel_library()


def _cpu_kernels(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The C kernels, where the backend is ``auto`` and they take these tensors."""
    if _backend is not Backend.AUTO or not pointwise_applies(*tensors):
        return None
    return kernel_library()


def prepare(device: torch.device, dtype: torch.dtype) -> None:
    """Build what the current backend will run on ``device`` before the first step (the
    CPU attention kernel compiles once per machine), so a step never waits for a build."""
    if _backend is Backend.AUTO and device.type == "cpu" and dtype == torch.float32:
        kernel_library()


def store_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    if use_triton(key):
        store_kv_cache_triton(key, value, k_cache, v_cache, slot_mapping)
        return
    library = _cpu_kernels(key, value, k_cache, v_cache)
    if library is not None and cache_strides(k_cache, v_cache) is not None:
        store_kv_cache_cpu(key, value, k_cache, v_cache, slot_mapping, library)
    else:
        store_kv_cache_reference(key, value, k_cache, v_cache, slot_mapping)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if use_triton(x):
        return rms_norm_triton(x, weight, eps, residual)
    library = _cpu_kernels(x, weight) if residual is None else _cpu_kernels(x, weight, residual)
    if library is not None:
        return rms_norm_cpu(x, weight, eps, residual, library)
    return rms_norm_reference(x, weight, eps, residual)


def rotary_embedding(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton(query):
        return rotary_embedding_triton(positions, query, key, cos_sin_cache)
    library = _cpu_kernels(query, key, cos_sin_cache)
    if library is not None and query.stride(1) == query.shape[2] and key.stride(1) == key.shape[2]:
        return rotary_embedding_cpu(positions, query, key, cos_sin_cache, library)
    return rotary_embedding_reference(positions, query, key, cos_sin_cache)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    if use_triton(x):
        return silu_and_mul_triton(x)
    library = _cpu_kernels(x)
    if library is not None:
        return silu_and_mul_cpu(x, library)
    return silu_and_mul_reference(x)


def sample_gumbel(logits: torch.Tensor, inv_temperature: torch.Tensor, seed: int) -> torch.Tensor:
    if use_triton(logits):
        return sample_gumbel_triton(logits, inv_temperature, seed)
    return sample_gumbel_reference(logits, inv_temperature, seed)


def lora_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    slot_start: torch.Tensor,
) -> torch.Tensor:
    if use_triton(x):
        return lora_shrink_triton(x, lora_a, sorted_token_ids, slot_start)
    return lora_shrink_reference(x, lora_a, sorted_token_ids, slot_start)


def lora_expand(
    y: torch.Tensor,
    shrunk: torch.Tensor,
    lora_b: torch.Tensor,
    shard_offsets: tuple[int, ...],
    sorted_token_ids: torch.Tensor,
    slot_start: torch.Tensor,
) -> torch.Tensor:
    args = (y, shrunk, lora_b, shard_offsets, sorted_token_ids, slot_start)
    if use_triton(y):
        return lora_expand_triton(*args)
    return lora_expand_reference(*args)
