"""Projection weights kept a second time in oneDNN's blocked layout, for fp32 on the CPU.

A plain ``F.linear`` hands MKL the weight in PyTorch's layout, and MKL repacks it into its
GEMM kernel's blocked layout on every call. For a prefill of thousands of tokens that copy is
noise; for a decode step of a few rows, or a speculative verify of k + 1 tokens per request,
it is a second pass over every weight of the model, each step. Reordering once at load time
(``torch.ops.mkldnn._reorder_linear_weight``, then ``_linear_pointwise``: the pair PyTorch's
own CPU compiler emits for fp32 linears whose row count varies, as a step's does) removes it.

oneDNN rather than MKL's own packed GEMM (``cblas_sgemm_pack``, which this module used
first): oneDNN picks its kernels from the CPU's instruction sets, where MKL takes slower paths
on some CPUs, and it handles a few rows far better. Only an AMD CPU has been measured against
MKL's packed GEMM so far (below); on Intel CPUs oneDNN is Intel's own library. Every
projection of SmolLM2-135M once (its 120 layer projections and the LM head, 538 MB), 2
threads, median ms of 7, arms alternating (``python -m benchmarks.cpu_linear_libraries``;
``cpu_packed_weights`` measures the engine end to end)::

    rows                  1      2      5      8     33     64    256
    AMD EPYC (AVX2)
      F.linear          68.4  122.8  110.2  118.9  171.2  252.0  674.1
      MKL packed        70.2   79.8   89.6  117.5  168.3  241.3  676.7
      oneDNN reordered  51.5   54.3   54.1   62.8  101.0  175.1  586.4

The reordered copy costs as much memory as the weights. Its products sum in another order
than ``F.linear``'s, so logits differ in the last bits (about 1e-6 relative); greedy parity
with transformers is checked by the same tests as before (tests/engine/test_greedy_parity.py),
and ``PackedWeight.agrees`` checks every copy at load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from engine.models.layers import Linear

if TYPE_CHECKING:
    from engine.models.llama import LlamaForCausalLM

log = logging.getLogger(__name__)

def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN-reordered fp32 linears exist in this PyTorch build, for this device and dtype."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


@dataclass(frozen=True, slots=True)
class PackedWeight:
    """``weight`` ``[out, in]`` and its reordered copy; ``linear`` computes ``x W^T + b``."""

    weight: torch.Tensor
    packed: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor) -> PackedWeight:
        assert weight.dim() == 2 and weight.dtype == torch.float32, weight.shape
        # One batch-size hint for all row counts: the op takes each call's real count, and
        # ``agrees`` checks at load that the layout serves other counts.
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 64)
        return cls(weight, packed)

    def agrees(self, probe_rows: tuple[int, ...] = (1, 3, 64)) -> bool:
        """Whether packed products equal ``F.linear``'s on a seeded probe at these row
        counts: the layout is oneDNN's own and chosen with one batch-size hint, so a CPU or
        oneDNN build where either assumption fails is caught at load, not in the outputs."""
        gen = torch.Generator().manual_seed(0)
        for rows in probe_rows:
            x = torch.randn(rows, self.weight.shape[1], generator=gen)
            if not torch.allclose(self.linear(x), F.linear(x, self.weight), rtol=1e-4, atol=1e-4):
                return False
        return True

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.numel() == x.shape[-1] and torch.get_num_threads() == 1:
            # One row on one thread: MKL's GEMV streams the weight faster than oneDNN there
            # (on the AMD EPYC above: cpu_linear_libraries_1_thread.json); from two threads
            # on, or from two rows, oneDNN is the faster.
            return F.linear(x, self.weight, bias)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")
        return out


def pack_weights(model: LlamaForCausalLM) -> bool:
    """Give every projection of ``model`` (its ``Linear`` modules and the LM head) a packed
    copy; if a packed copy disagrees with ``F.linear`` (``PackedWeight.agrees``), none is
    kept, a warning says so, and the model runs on ``F.linear``. Returns whether it packed.

    One copy of each weight shape is probed: oneDNN picks the layout from the shape (with
    the dtype and the CPU), never from the values, so the others share its verdict. Probing
    all of SmolLM2's 121 weights took 1.1 s of every engine start on one thread; its 5
    shapes take 0.3 s (the LM head's is most of it)."""
    head = model.model.embed_tokens if model.lm_head is None else model.lm_head
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    packed = [PackedWeight.of(m.weight) for m in linears]
    head_packed = PackedWeight.of(head.weight)
    one_per_shape = {tuple(p.weight.shape): p for p in [*packed, head_packed]}
    if not all(p.agrees() for p in one_per_shape.values()):
        log.warning("oneDNN-reordered weights disagree with F.linear on this machine: not packing")
        return False
    for module, weight in zip(linears, packed, strict=True):
        module.packed = weight
    model.head_packed = head_packed
    return True
