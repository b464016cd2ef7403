"""The CPU's C kernels, compiled on first use into one shared library.

``cpu_paged_attention.c`` (kernels/cpu_attention.py), ``cpu_linear.c`` (kernels/cpu_linear.py),
``cpu_pointwise.c`` (kernels/cpu_pointwise.py) and ``cpu_decoder.c`` (the whole decoder stack
that calls them, engine/models/cpu_decoder.py) are compiled together with the machine's C
compiler (``$CC``, else ``cc``) for this CPU (``-march=native``) into
``~/.cache/kvbatch/kernels`` (``$XDG_CACHE_HOME`` if set), keyed by the sources, the flags and
the CPU's model and flags, so a cache shared between machines never loads a library built for
another CPU. Where no compiler is found or the build fails, ``kernel_library`` returns None,
the reason is logged once, and the PyTorch paths run instead.
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

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_SOURCES = tuple(
    _HERE / name
    for name in ("cpu_paged_attention.c", "cpu_linear.c", "cpu_pointwise.c", "cpu_decoder.c")
)
_HEADERS = (_HERE / "cpu_exp.h", _HERE / "cpu_kernels.h")
# Reassociation lets the compiler vectorize the dot products' sums. Not -ffast-math: a
# shared library built with it may set the CPU's flush-to-zero mode for the whole process
# when it loads (gcc links crtfastmath.o), which would change torch's own results.
# -mprefer-vector-width=512: gcc vectorizes plain loops (the softmax's exponentials, the
# norms) with 256-bit registers on AVX-512 CPUs unless told otherwise; the hand-written
# vector code is 512-bit either way, and a CPU without AVX-512 ignores the flag. On an Intel
# Xeon VM (2 threads, 8 prefills of 256 tokens, 30 layers of SmolLM2's attention, four
# alternating runs each) it took the attention from 144-154 to 132-136 ms, and with the
# softmax's maximum loading its vectors directly (cpu_paged_attention.c's largest) to
# 119-122 ms.
_FLAGS = (
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-fno-math-errno",
    "-shared",
    "-fPIC",
    "-fopenmp",
)
_I64, _F32, _PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
# Each exported function's (parameters, result), as the C sources declare them.
_SIGNATURES: dict[str, tuple[tuple[type[ctypes._SimpleCData[Any]], ...], type[Any] | None]] = {
    "kvbatch_paged_attention": (
        (
            *(_PTR, _PTR, _PTR, _PTR, _I64),  # query, k_cache, v_cache, block_table, table_stride
            *(_PTR, _PTR, _I64, _PTR),  # query_start_loc, seq_lens, num_rows (requests), out
            *(_I64, _I64, _I64, _I64),  # num_heads, num_kv_heads, head_size, block_size
            *(_I64, _I64, _I64),  # the caches' block, position and head strides
            *(_F32, _I64),  # scale, num_threads
        ),
        ctypes.c_int,
    ),
    "kvbatch_rms_norm": (
        (
            *(_PTR, _I64, _PTR, _I64, _PTR, _F32),  # x, ldx, residual, ld_residual, weight, eps
            *(_PTR, _PTR, _I64, _I64, _I64),  # out, residual_out, rows, hidden, num_threads
        ),
        None,
    ),
    "kvbatch_rotary": (
        (
            *(_PTR, _PTR, _I64, _PTR, _I64, _PTR),  # positions, query, ldq, key, ldk, cos_sin
            *(_PTR, _PTR, _I64, _I64, _I64, _I64, _I64),  # q_out, k_out, tokens, heads,
            # kv_heads, head_size, num_threads
        ),
        None,
    ),
    "kvbatch_store_kv": (
        (
            *(_PTR, _I64, _PTR, _I64),  # key, ldk, value, ldv
            *(_PTR, _PTR, _PTR, _I64),  # k_cache, v_cache, slots, tokens
            *(_I64, _I64, _I64, _I64),  # kv_heads, head_size, block_size, num_blocks
            *(_I64, _I64, _I64),  # the caches' block, position and head strides
        ),
        _I64,
    ),
    "kvbatch_silu_and_mul": ((_PTR, _I64, _PTR, _I64, _I64, _I64), None),  # x, ldx, out, rows,
    # inter, num_threads
    # layers, num_layers, final_norm, dims, step, scratch, gemm, hidden, num_threads
    # (the structures are engine/models/cpu_decoder.py's)
    "kvbatch_decoder": ((_PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64), ctypes.c_int),
    "kvbatch_linear_panel_width": ((), _I64),
    "kvbatch_pack_linear": ((_PTR, _I64, _I64, _PTR), None),  # weight, N, K, panels
    "kvbatch_linear": (
        (
            *(_PTR, _I64, _I64, _I64),  # x, M, K, ldx
            *(_PTR, _I64, _PTR),  # panels, N, bias
            *(_PTR, _I64, _I64),  # y, ldy, num_threads
        ),
        None,
    ),
}


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
            [compiler, *_FLAGS, *map(str, _SOURCES), "-o", tmp, "-lm"],
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
    """The compiled kernels, built on the first call; None where they cannot be built here."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.warning("no C compiler found: the CPU runs the PyTorch paths")
        return None
    try:
        digest = hashlib.sha256()
        for source in (*_SOURCES, *_HEADERS):
            digest.update(source.read_bytes())
        digest.update(" ".join(_FLAGS).encode() + _cpu_identity().encode())
        target = _cache_dir() / f"cpu_kernels-{digest.hexdigest()[:16]}.so"
        if not target.exists():
            _build(compiler, target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("CPU kernels not built (%s): the CPU runs the PyTorch paths", detail)
        return None
    for name, (argtypes, restype) in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes = argtypes
        function.restype = restype
    return library


@functools.cache
def blas_sgemm() -> int | None:
    """The address of the Fortran BLAS ``sgemm_`` that torch's CPU GEMM (``F.linear``) calls:
    MKL, linked into torch's x86 wheels and exported by ``libtorch_cpu``. The one-call
    decoder calls it for long prefill chunks on Intel CPUs, where it beats the panels
    (packed_weights.PANEL_MAX_ROWS), the same call with the same arguments as torch's, so
    the products are the same bits. None where torch has no MKL or does not export it."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return ctypes.cast(library.sgemm_, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
