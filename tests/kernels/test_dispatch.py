"""Which implementation the public kernel functions run under each backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import kernels
from infra.harness.paged_batch import make_batch
from kernels import dispatch
from kernels.rotary import build_cos_sin_cache

LAUNCHERS = [
    "paged_attention_triton",
    "store_kv_cache_triton",
    "rms_norm_triton",
    "rotary_embedding_triton",
    "silu_and_mul_triton",
]


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the Triton launchers called through ``kernels``, in order (each still runs)."""
    calls: list[str] = []
    for name in LAUNCHERS:
        monkeypatch.setattr(dispatch, name, _recording(name, getattr(dispatch, name), calls))
    previous = kernels.get_backend()
    yield calls
    kernels.set_backend(previous)


def _recording(name: str, fn: Callable[..., Any], calls: list[str]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return fn(*args, **kwargs)

    return wrapper


def _run_every_op(device: torch.device) -> list[torch.Tensor]:
    """One call of each public function on small inputs; returns every output, caches included."""
    batch = make_batch(
        [3, 1],
        [3, 20],
        device=device,
    )
    key = torch.randn(4, 2, 16, device=device)
    slots = torch.tensor([0, 1, -1, 40], device=device)
    kernels.store_kv_cache(key, key + 1, batch.k_cache, batch.v_cache, slots)
    attn = kernels.paged_attention(batch)
    x = torch.randn(4, 32, device=device)
    normed, residual = kernels.rms_norm(x, torch.ones(32, device=device), 1e-6, x)
    assert residual is not None
    cos_sin = build_cos_sin_cache(16, 32, 10000.0).to(device)
    q, k = kernels.rotary_embedding(torch.arange(4, device=device), batch.query, key, cos_sin)
    act = kernels.silu_and_mul(x)
    return [batch.k_cache, batch.v_cache, attn, normed, residual, q, k, act]


def test_forced_triton_runs_every_launcher_and_matches_torch(launched: list[str]) -> None:
    cpu = torch.device("cpu")
    kernels.set_backend("torch")
    torch.manual_seed(1)
    expected = _run_every_op(cpu)
    assert launched == []
    kernels.set_backend("triton")
    torch.manual_seed(1)
    actual = _run_every_op(cpu)
    assert sorted(launched) == sorted(LAUNCHERS)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_auto_runs_references_on_cpu(launched: list[str]) -> None:
    kernels.set_backend("auto")
    _run_every_op(torch.device("cpu"))
    assert launched == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_runs_triton_on_cuda(launched: list[str]) -> None:
    kernels.set_backend("auto")
    _run_every_op(torch.device("cuda"))
    assert sorted(launched) == sorted(LAUNCHERS)


def test_forced_triton_on_cpu_without_interpreter_raises(
    launched: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kernels.set_backend("triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.silu_and_mul(torch.randn(2, 8))
    assert launched == []


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError):
        kernels.set_backend("cuda")
