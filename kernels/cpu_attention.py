"""The CPU's paged attention for short queries: a C kernel, built on first use.

The PyTorch reference (kernels/attention.py) gathers each decode's cached K/V into a padded
copy and runs SDPA over it, so the context crosses memory three times; in a 32-row decode
step of SmolLM2 over ~300-token contexts that was ~160 of ~300 ms. ``cpu_paged_attention.c``
reads the cache in place through the block table, once. It serves the rows of up to
``MAX_SHORT_QUERY`` query tokens (decodes and speculative verifies), in fp32; longer prefill
chunks stay with SDPA, whose GEMMs suit them.

The kernel is compiled with the machine's C compiler (``$CC``, else ``cc``) for this CPU
(``-march=native``) into ``~/.cache/kvbatch/kernels`` (``$XDG_CACHE_HOME`` if set), keyed by
the source, the flags and the CPU's model and flags, so a cache shared between machines
never loads a library built for another CPU. Where no compiler is found or the build fails,
the reference runs instead, and the reason is logged once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from kernels.attention import (
    PagedAttentionInputs,
    ReferencePlan,
    attend_prefills,
    plan_attention,
)

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_paged_attention.c")
# Reassociation lets the compiler vectorize the dot products' sums. Not -ffast-math: a
# shared library built with it may set the CPU's flush-to-zero mode for the whole process
# when it loads (gcc links crtfastmath.o), which would change torch's own results.
_FLAGS = (
    "-O3",
    "-march=native",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-fno-math-errno",
    "-shared",
    "-fPIC",
    "-fopenmp",
)
_I64, _F32, _PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
# kvbatch_paged_attention's parameters, in order (cpu_paged_attention.c).
_ARGTYPES: tuple[type[ctypes._SimpleCData[Any]], ...] = (
    *(_PTR, _PTR, _PTR, _PTR, _I64),  # query, k_cache, v_cache, block_table, table_stride
    *(_PTR, _PTR, _PTR, _I64, _PTR),  # query_start_loc, seq_lens, rows, num_rows, out
    *(_I64, _I64, _I64, _I64),  # num_heads, num_kv_heads, head_size, block_size
    *(_F32, _I64),  # scale, num_threads
)


def _cpu_identity() -> str:
    """The CPU's model name and feature flags: what ``-march=native`` compiles for."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvbatch" / "kernels"


def _build(compiler: str, target: Path) -> None:
    """Compile to a temporary name beside ``target``, then rename: another process building
    the same library at the same time ends with the same file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *_FLAGS, str(_SOURCE), "-o", tmp, "-lm"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


@functools.cache
def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernel, built on the first call; None where it cannot be built here."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.warning("no C compiler found: CPU attention runs the PyTorch reference")
        return None
    try:
        digest = hashlib.sha256(_SOURCE.read_bytes())
        digest.update(" ".join(_FLAGS).encode() + _cpu_identity().encode())
        target = _cache_dir() / f"cpu_paged_attention-{digest.hexdigest()[:16]}.so"
        if not target.exists():
            _build(compiler, target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("CPU attention kernel not built (%s): the PyTorch reference runs", detail)
        return None
    library.kvbatch_paged_attention.argtypes = _ARGTYPES
    library.kvbatch_paged_attention.restype = ctypes.c_int
    return library


def kernel_applies(batch: PagedAttentionInputs) -> bool:
    """Whether ``batch`` is one the C kernel serves: fp32 tensors in the CPU's memory,
    laid out as it reads them."""
    tensors = (batch.query, batch.k_cache, batch.v_cache)
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and all(t.is_contiguous() for t in tensors)
        and batch.block_table.dtype == torch.int32
        and batch.block_table.stride(1) == 1
    )


def paged_attention_cpu(
    batch: PagedAttentionInputs,
    library: ctypes.CDLL,
    *,
    key: torch.Tensor | None = None,  # [num_tokens, num_kv_heads, head_size], this step's
    value: torch.Tensor | None = None,
    plan: ReferencePlan | None = None,  # plan_attention of these tensors, if already made
) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
    """``paged_attention_reference``'s result: short queries through the C kernel, longer
    prefill chunks through the reference's SDPA calls."""
    if plan is None:
        block_size = batch.k_cache.shape[1]
        plan = plan_attention(batch.block_table, batch.query_start_loc, batch.seq_lens, block_size)
    out = torch.empty_like(batch.query)
    attend_short_queries(batch, plan.kernel_rows, out, library)
    attend_prefills(batch, plan, out, key=key, value=value)
    return out


def attend_short_queries(
    batch: PagedAttentionInputs,
    rows: torch.Tensor,  # [R] int32: requests of 1..MAX_SHORT_QUERY query tokens
    out: torch.Tensor,  # [num_tokens, num_heads, head_size]: their rows are written
    library: ctypes.CDLL,
) -> None:
    """Attend the query tokens of ``rows`` into ``out`` with the C kernel."""
    if rows.numel() == 0:
        return
    query, k_cache = batch.query, batch.k_cache
    num_heads, head_size = query.shape[1], query.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    assert out.is_contiguous() and out.shape == query.shape and out.dtype == torch.float32
    assert num_heads % num_kv_heads == 0, "every query head belongs to one KV head"
    query_start_loc = batch.query_start_loc.to(torch.int32).contiguous()
    seq_lens = batch.seq_lens.to(torch.int32).contiguous()
    status = library.kvbatch_paged_attention(
        query.data_ptr(),
        k_cache.data_ptr(),
        batch.v_cache.data_ptr(),
        batch.block_table.data_ptr(),
        batch.block_table.stride(0),
        query_start_loc.data_ptr(),
        seq_lens.data_ptr(),
        rows.data_ptr(),
        rows.numel(),
        out.data_ptr(),
        num_heads,
        num_kv_heads,
        head_size,
        block_size,
        batch.scale,
        torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError("the CPU attention kernel could not allocate its scores")
