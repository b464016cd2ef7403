"""The CPU's C per-token kernels (kernels/cpu_pointwise.py) against their PyTorch references,
and when the dispatcher runs them."""

from __future__ import annotations

import ctypes

import pytest
import torch

from kernels import Backend, rms_norm, rotary_embedding, set_backend, silu_and_mul, store_kv_cache
from kernels.activation import silu_and_mul_reference
from kernels.cpu_library import kernel_library
from kernels.cpu_pointwise import (
    pointwise_applies,
    rms_norm_cpu,
    rotary_embedding_cpu,
    silu_and_mul_cpu,
    store_kv_cache_cpu,
)
from kernels.kv_cache import store_kv_cache_reference
from kernels.norm import rms_norm_reference
from kernels.rotary import build_cos_sin_cache, rotary_embedding_reference
from tests.kernels.common import assert_close

# Row counts on both sides of the size where the C kernels split rows between threads.
TOKENS = [1, 3, 200]


@pytest.fixture
def library() -> ctypes.CDLL:
    lib = kernel_library()
    assert lib is not None, "this machine has a C compiler: the kernels must build"
    return lib


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_the_reference(
    library: ctypes.CDLL, tokens: int, with_residual: bool
) -> None:
    gen = torch.Generator().manual_seed(tokens)
    # x as a view whose rows are further apart than its width (a slice of a wider output).
    x = (torch.randn(tokens, 600, generator=gen) * 4)[:, :576]
    weight = torch.randn(576, generator=gen)
    residual = torch.randn(tokens, 576, generator=gen) if with_residual else None
    out, residual_out = rms_norm_cpu(x, weight, 1e-6, residual, library)
    expected, expected_residual = rms_norm_reference(x, weight, 1e-6, residual)
    assert_close(out, expected)
    if with_residual:
        assert residual_out is not None and expected_residual is not None
        assert torch.equal(residual_out, expected_residual)
    else:
        assert residual_out is None


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize(("heads", "kv_heads", "head_size"), [(9, 3, 64), (4, 4, 128), (2, 1, 16)])
def test_rotary_embedding_matches_the_reference(
    library: ctypes.CDLL, tokens: int, heads: int, kv_heads: int, head_size: int
) -> None:
    """q and k as the attention layer hands them over: views into one fused qkv output."""
    gen = torch.Generator().manual_seed(tokens + heads)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_size, generator=gen)
    q, k, _ = qkv.split([heads * head_size, kv_heads * head_size, kv_heads * head_size], -1)
    query = q.reshape(tokens, heads, head_size)
    key = k.reshape(tokens, kv_heads, head_size)
    cos_sin = build_cos_sin_cache(head_size, 8192, 10000.0, None)
    positions = torch.randint(0, 8192, (tokens,), generator=gen)
    got = rotary_embedding_cpu(positions, query, key, cos_sin, library)
    expected = rotary_embedding_reference(positions, query, key, cos_sin)
    for a, b in zip(got, expected, strict=True):
        assert a.is_contiguous()
        assert_close(a, b)


@pytest.mark.parametrize("tokens", TOKENS)
def test_store_kv_cache_matches_the_reference_and_skips_negative_slots(
    library: ctypes.CDLL, tokens: int
) -> None:
    gen = torch.Generator().manual_seed(tokens)
    kv = torch.randn(tokens, 2 * 3 * 64, generator=gen)
    key, value = (t.reshape(tokens, 3, 64) for t in kv.split([192, 192], -1))
    slots = torch.randperm(16 * 20, generator=gen)[:tokens]
    slots[0] = -1
    caches = [torch.zeros(20, 16, 3, 64) for _ in range(4)]
    store_kv_cache_cpu(key, value, caches[0], caches[1], slots, library)
    store_kv_cache_reference(key, value, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


def test_store_kv_cache_fills_head_major_caches_as_contiguous_ones(library: ctypes.CDLL) -> None:
    gen = torch.Generator().manual_seed(0)
    key, value = torch.randn(2, 50, 3, 64, generator=gen)
    slots = torch.randperm(16 * 20, generator=gen)[:50]
    want = [torch.zeros(20, 16, 3, 64) for _ in range(2)]
    store_kv_cache_reference(key, value, want[0], want[1], slots)
    by_c, by_reference = ([torch.zeros(20, 3, 16, 64).transpose(1, 2) for _ in "kv"] for _ in "ab")
    store_kv_cache_cpu(key, value, by_c[0], by_c[1], slots, library)
    store_kv_cache_reference(key, value, by_reference[0], by_reference[1], slots)
    for got in (by_c, by_reference):
        assert not got[0].is_contiguous()
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_a_slot_past_the_cache_is_an_error_not_a_stray_write(library: ctypes.CDLL) -> None:
    key = value = torch.randn(2, 3, 64)
    k_cache, v_cache = torch.zeros(2, 16, 3, 64), torch.zeros(2, 16, 3, 64)
    with pytest.raises(IndexError, match="past the KV cache"):
        store_kv_cache_cpu(key, value, k_cache, v_cache, torch.tensor([5, 32]), library)


@pytest.mark.parametrize("tokens", TOKENS)
def test_silu_and_mul_matches_the_reference(library: ctypes.CDLL, tokens: int) -> None:
    """Gates from far negative to far positive: the sigmoid from e^-|g| neither overflows nor
    loses the tails."""
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, 2 * 1536, generator=gen) * 12
    x[0, :4] = torch.tensor([-120.0, -88.0, 88.0, 120.0])
    assert_close(silu_and_mul_cpu(x, library), silu_and_mul_reference(x))


def test_the_default_backend_runs_the_c_kernels_and_torch_forces_the_references(
    library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for name in ("rms_norm_cpu", "rotary_embedding_cpu", "store_kv_cache_cpu", "silu_and_mul_cpu"):
        real = getattr(__import__("kernels.cpu_pointwise", fromlist=[name]), name)

        def counted(*args: object, _real: object = real, _name: str = name) -> object:
            calls.append(_name)
            return _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(f"kernels.dispatch.{name}", counted)

    def run_all() -> None:
        x = torch.randn(4, 64)
        rms_norm(x, torch.ones(64), 1e-6, x)
        qk = torch.randn(4, 2, 16)
        rotary_embedding(torch.arange(4), qk, qk, build_cos_sin_cache(16, 16, 10000.0, None))
        store_kv_cache(qk, qk, torch.zeros(2, 4, 2, 16), torch.zeros(2, 4, 2, 16), torch.arange(4))
        silu_and_mul(x)

    run_all()
    assert sorted(calls) == sorted(
        ["rms_norm_cpu", "rotary_embedding_cpu", "store_kv_cache_cpu", "silu_and_mul_cpu"]
    )
    set_backend(Backend.TORCH)
    try:
        run_all()
    finally:
        set_backend(Backend.AUTO)
    assert len(calls) == 4


def test_other_dtypes_and_layouts_go_to_the_references() -> None:
    assert pointwise_applies(torch.randn(2, 8))
    assert not pointwise_applies(torch.randn(2, 8, dtype=torch.bfloat16))
    assert not pointwise_applies(torch.randn(8, 2).t())
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    out, _ = rms_norm(x, torch.ones(8, dtype=torch.bfloat16), 1e-6)
    assert out.dtype == torch.bfloat16
