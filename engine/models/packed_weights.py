"""Projection weights kept a second time in a layout made for the CPU's steps, fp32 only.

A plain ``F.linear`` hands MKL the weight in PyTorch's layout, and MKL repacks it into its
GEMM kernel's blocked layout on every call. For a prefill of thousands of tokens that copy is
noise; for a decode step of a few rows, or a speculative verify of k + 1 tokens per request,
it is a second pass over every weight of the model, each step. Packing once at load time
removes it. Two packed layouts, the first the machine can run:

- ``Layout.PANELS``: panels for kernels/cpu_linear.c, compiled for this CPU on first use
  (kernels/cpu_library.py). Every row of a step meets a panel while the panel is in the CPU's
  cache, in register tiles; each product is one in-order sum over the input features.
- ``Layout.ONEDNN``: where no C compiler is found, oneDNN's blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight``, then ``_linear_pointwise``: the pair
  PyTorch's own CPU compiler emits for fp32 linears whose row count varies, as a step's does).

Every projection of SmolLM2-135M once (its 120 layer projections and the LM head, 538 MB
streamed from memory), 2 threads, median ms of 5, arms alternating
(``python -m benchmarks.cpu_linear_libraries``, ``cpu_linear_libraries_panels.json``)::

    rows                     1      2      5      8     16     33     64    256
    Intel Xeon (AVX-512), 2.0 GHz VM
      F.linear            43.1   40.5   94.1  107.2  177.6  204.6  184.1  500.0
      MKL packed          42.4   39.2   47.0   47.2   58.3   81.9  122.5  552.9
      oneDNN reordered    52.2   52.5   56.3   55.6   66.8   92.9  153.5  488.7
      panels (cpu_linear) 44.1   41.5   46.5   45.5   57.6   74.3  116.3  480.8

oneDNN against MKL's packed GEMM (``cblas_sgemm_pack``, which this module used first) and
``F.linear`` on an AMD EPYC (AVX2), the whole model, ms::

    rows                  1      2      5      8     33     64    256
      F.linear          68.4  122.8  110.2  118.9  171.2  252.0  674.1
      MKL packed        70.2   79.8   89.6  117.5  168.3  241.3  676.7
      oneDNN reordered  51.5   54.3   54.1   62.8  101.0  175.1  586.4

The packed copy costs as much memory as the weights. Its products sum in another order than
``F.linear``'s, so logits differ in the last bits (about 1e-6 relative); greedy parity with
transformers is checked by the same tests as before (tests/engine/test_greedy_parity.py),
and ``PackedWeight.agrees`` checks one copy of each shape at load.
"""

from __future__ import annotations

import ctypes
import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from engine.models.layers import Linear
from kernels.cpu_library import kernel_library
from kernels.cpu_linear import pack_linear, panel_linear

if TYPE_CHECKING:
    from engine.models.llama import LlamaForCausalLM

log = logging.getLogger(__name__)


def _intel_cpu() -> bool:
    """Whether this is an Intel CPU: MKL, PyTorch's GEMM, takes its AVX-512 paths only there
    (on other x86 CPUs it runs its AVX2 code whatever the CPU has)."""
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# From this many rows (a prefill chunk) an Intel CPU's MKL GEMM on the unpacked weight beats
# the panels: its cache blocking wins once the row count amortizes its per-call repacking.
# SmolLM2's projections, 2 threads, Intel Xeon: 512 rows panels 748 ms vs F.linear 840; 768
# rows 1,346 vs 1,128; 2,048 rows 3,128 vs 2,530 (each row count once, the paths
# alternating). Elsewhere MKL runs its AVX2 code and the panels win at every count: AMD EPYC
# (Zen 5, AVX-512), 640 rows 413 vs 919 ms, 2,048 rows 1,300 vs 2,843 (oneDNN 1,259).
# Later, on an Intel Xeon VM with AMX (2026-12-02, benchmarks/cpu_linear_libraries.py, the
# LM head included): 640 rows panels 573 vs F.linear 582 ms, 2,048 rows 1,757 vs 1,717; and
# in the engine, prefill-only runs of the 64-prompt workload with the panels at every row
# count took 15.0-15.3 s against 12.9-14.2 with MKL from here. The one-call decoder
# (cpu_decoder.py) calls the same MKL GEMM from here. None: no limit.
PANEL_MAX_ROWS: int | None = 640 if _intel_cpu() else None


class Layout(enum.Enum):
    PANELS = "panels"  # kernels/cpu_linear.c
    ONEDNN = "onednn"  # torch.ops.mkldnn


def _onednn_available() -> bool:
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def packing_layout(device: torch.device, dtype: torch.dtype) -> Layout | None:
    """The packed layout fp32 CPU weights get on this machine (the C kernel where it builds,
    else oneDNN where this PyTorch build has it); None for other devices and dtypes."""
    if device.type != "cpu" or dtype != torch.float32:
        return None
    if kernel_library() is not None:
        return Layout.PANELS
    return Layout.ONEDNN if _onednn_available() else None


@dataclass(frozen=True, slots=True)
class PackedWeight:
    """``weight`` ``[out, in]`` and its packed copy; ``linear`` computes ``x W^T + b``."""

    weight: torch.Tensor
    packed: torch.Tensor
    layout: Layout
    library: ctypes.CDLL | None  # the C kernels, for Layout.PANELS

    @classmethod
    def of(cls, weight: torch.Tensor, layout: Layout) -> PackedWeight:
        assert weight.dim() == 2 and weight.dtype == torch.float32, weight.shape
        if layout is Layout.PANELS:
            library = kernel_library()
            assert library is not None, "packing_layout chooses panels only where they build"
            return cls(weight, pack_linear(weight, library), layout, library)
        # One batch-size hint for all row counts: the op takes each call's real count, and
        # ``agrees`` checks at load that the layout serves other counts.
        return cls(weight, torch.ops.mkldnn._reorder_linear_weight(weight, 64), layout, None)

    def agrees(self, probe_rows: tuple[int, ...] = (1, 3, 64)) -> bool:
        """Whether packed products equal ``F.linear``'s on a seeded probe at these row
        counts: a layout (oneDNN's own, chosen with one batch-size hint) or a kernel build
        that fails on this machine is caught at load, not in the outputs."""
        gen = torch.Generator().manual_seed(0)
        for rows in probe_rows:
            x = torch.randn(rows, self.weight.shape[1], generator=gen)
            if not torch.allclose(self.linear(x), F.linear(x, self.weight), rtol=1e-4, atol=1e-4):
                return False
        return True

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.library is not None:
            if PANEL_MAX_ROWS is not None and x.numel() >= PANEL_MAX_ROWS * x.shape[-1]:
                return F.linear(x, self.weight, bias)
            return panel_linear(x, self.packed, self.weight.shape[0], self.library, bias)
        if x.numel() == x.shape[-1] and torch.get_num_threads() == 1:
            # One row on one thread: MKL's GEMV streams the weight faster than oneDNN there
            # (on the AMD EPYC above: cpu_linear_libraries_1_thread.json); from two threads
            # on, or from two rows, oneDNN is the faster.
            return F.linear(x, self.weight, bias)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")
        return out


def pack_weights(model: LlamaForCausalLM, layout: Layout) -> bool:
    """Give every projection of ``model`` (its ``Linear`` modules and the LM head) a packed
    copy; if a packed copy disagrees with ``F.linear`` (``PackedWeight.agrees``), none is
    kept, a warning says so, and the model runs on ``F.linear``. Returns whether it packed.

    One copy of each weight shape is probed: both layouts are chosen from the shape (with
    the dtype and the CPU), never from the values, so the others share its verdict. Probing
    all of SmolLM2's 121 weights took 1.1 s of every engine start on one thread; its 5
    shapes take 0.3 s (the LM head's is most of it)."""
    head = model.model.embed_tokens if model.lm_head is None else model.lm_head
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    packed = [PackedWeight.of(m.weight, layout) for m in linears]
    head_packed = PackedWeight.of(head.weight, layout)
    one_per_shape = {tuple(p.weight.shape): p for p in [*packed, head_packed]}
    if not all(p.agrees() for p in one_per_shape.values()):
        log.warning("%s weights disagree with F.linear on this machine: not packing", layout.value)
        return False
    for module, weight in zip(linears, packed, strict=True):
        module.packed = weight
    model.head_packed = head_packed
    return True
