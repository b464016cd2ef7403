"""Input checks shared by the Triton launchers: bad tensors raise ``ValueError`` before launch.

A kernel handed a wrong dtype or a strided last dimension would not fail; it would read the
wrong bytes. So every launcher validates what it cannot handle and says which argument is wrong,
and builds its launch keywords (``pointers``, ``strides``) from the tensors it checked.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_rank(name: str, t: torch.Tensor, ndim: int) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        raise ValueError(f"{name} has dtype {t.dtype}; expected one of {allowed}")


def check_unit_stride(name: str, t: torch.Tensor) -> None:
    """Kernels address the last dimension as a contiguous vector."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, strides {t.stride()}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors are on different devices: {devices}")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {shape}")


def pointers(**tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    """A launcher's pointer keywords, one per tensor, once they are known to share a device:
    ``pointers(key=key, k_cache=k_cache)`` is ``{"key_ptr": key, "k_cache_ptr": k_cache}``.
    Naming each tensor once, for the check and the launch both, leaves no argument unchecked."""
    check_same_device(**tensors)
    return {f"{name}_ptr": t for name, t in tensors.items()}


def strides(t: torch.Tensor, names: str) -> dict[str, int]:
    """A launcher's stride keywords for ``t``, one per leading dimension in ``names``:
    ``strides(k_cache, "cb cs ch")`` is ``{"stride_cb": k_cache.stride(0), ...}``."""
    return {f"stride_{name}": t.stride(dim) for dim, name in enumerate(names.split())}
