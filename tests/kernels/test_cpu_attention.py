"""The CPU's C attention kernel against ``paged_attention_reference``, and when it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kernels.cpu_attention as cpu_attention
from infra.harness.paged_batch import make_batch
from kernels import Backend, attention_reads_plan, paged_attention, set_backend
from kernels.attention import MAX_SHORT_QUERY, paged_attention_reference
from kernels.cpu_attention import kernel_applies, paged_attention_cpu
from kernels.cpu_library import kernel_library
from tests.kernels.common import assert_close

CPU = torch.device("cpu")


@pytest.fixture
def library() -> object:
    lib = kernel_library()
    assert lib is not None, "this machine has a C compiler: the kernel must build"
    return lib


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (4, 2), (9, 3), (8, 1)])
@pytest.mark.parametrize(("head_size", "block_size"), [(16, 16), (64, 16), (64, 32), (24, 8)])
def test_decodes_short_queries_and_prefills_match_the_reference(
    library: object, num_heads: int, num_kv_heads: int, head_size: int, block_size: int
) -> None:
    # Decodes around block edges, a one-token context, speculative verifies up to the
    # longest short query, and prefill chunks beside them: fresh and on a cached prefix, cut
    # into the kernel's 16-token pieces with a partial last one, or exactly two pieces.
    q_lens = [1, 1, 1, 1, 5, MAX_SHORT_QUERY, 2, 40, 9, 1, 100, 32]
    seq_lens = [1, 31, 33, 300, 70, 90, 2, 200, 9, 129, 100, 50]
    batch = make_batch(
        q_lens,
        seq_lens,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        block_size=block_size,
        device=CPU,
    )
    assert kernel_applies(batch)
    got = paged_attention_cpu(batch, library)  # type: ignore[arg-type]
    assert_close(got, paged_attention_reference(batch))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("q_lens", "seq_lens"),
    [
        ([1] * 12 + [4], [17 * i + 3 for i in range(12)] + [60]),
        ([70], [70]),  # one prompt alone: its pieces are what the threads share
    ],
)
def test_any_thread_count_gives_the_same_rows(
    library: object, threads: int, q_lens: list[int], seq_lens: list[int]
) -> None:
    batch = make_batch(q_lens, seq_lens, num_heads=9, num_kv_heads=3, device=CPU)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = paged_attention_cpu(batch, library)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(before)
    assert_close(got, paged_attention_reference(batch))


def test_the_default_backend_runs_the_kernel_and_torch_forces_the_reference(
    library: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = make_batch([1, 1, 3], [20, 45, 30], device=CPU)
    calls: list[int] = []
    real = cpu_attention.paged_attention_cpu

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("kernels.dispatch.paged_attention_cpu", counted)
    assert_close(paged_attention(batch), paged_attention_reference(batch))
    assert calls == [1]
    assert not attention_reads_plan(batch), "the kernel takes no plan: none is made for it"
    set_backend(Backend.TORCH)
    try:
        paged_attention(batch)
        assert attention_reads_plan(batch)
    finally:
        set_backend(Backend.AUTO)
    assert calls == [1]


def _head_major(cache: torch.Tensor) -> torch.Tensor:
    """``cache``'s values, each KV head's rows of a block together (the engine's CPU caches)."""
    return cache.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_size", "block_size"), [(9, 3, 64, 16), (4, 2, 24, 8)]
)
def test_head_major_caches_give_the_bits_of_contiguous_ones(
    library: object, num_heads: int, num_kv_heads: int, head_size: int, block_size: int
) -> None:
    # Decodes, a verify and a prefill chunk; head size 24 takes the plain sweeps.
    batch = make_batch(
        [1, 1, 5, 40],
        [31, 300, 70, 200],
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        block_size=block_size,
        device=CPU,
    )
    contiguous = paged_attention_cpu(batch, library)  # type: ignore[arg-type]
    batch.k_cache, batch.v_cache = _head_major(batch.k_cache), _head_major(batch.v_cache)
    assert kernel_applies(batch) and not batch.k_cache.is_contiguous()
    assert torch.equal(paged_attention_cpu(batch, library), contiguous)  # type: ignore[arg-type]


def test_other_dtypes_and_layouts_go_to_the_reference() -> None:
    assert not kernel_applies(make_batch([1], [9], dtype=torch.bfloat16, device=CPU))
    batch = make_batch([1], [9], device=CPU)
    batch.k_cache = _head_major(batch.k_cache)  # the two caches laid out differently
    assert not kernel_applies(batch)
    batch.v_cache = _head_major(batch.v_cache)
    assert kernel_applies(batch)
    batch.k_cache = batch.v_cache = batch.k_cache.transpose(2, 3).contiguous().transpose(2, 3)
    assert not kernel_applies(batch), "a head's values must be side by side"


def test_without_a_compiler_the_reference_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kernel_library.cache_clear()
    try:
        assert kernel_library() is None
        batch = make_batch([1, 2], [10, 20], device=CPU)
        assert_close(paged_attention(batch), paged_attention_reference(batch))
    finally:
        kernel_library.cache_clear()


def test_a_failed_build_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    compiler = tmp_path / "broken-cc"
    compiler.write_text("#!/bin/sh\necho 'cc: broken' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernel_library.cache_clear()
    try:
        assert kernel_library() is None
    finally:
        kernel_library.cache_clear()
    assert list((tmp_path / "cache" / "kvbatch" / "kernels").iterdir()) == []
