"""Projection weights kept a second time in MKL's packed GEMM layout, for fp32 on the CPU.

A plain ``F.linear`` hands MKL the weight in PyTorch's layout, and MKL repacks it into its
GEMM kernel's blocked layout on every call. For a prefill of thousands of tokens that copy is
noise; for a decode step of a few rows, or a speculative verify of k + 1 tokens per request,
it is a second pass over every weight of the model, each step. Packing once at load time
(``cblas_sgemm_pack``, reached through ``torch.ops.mkl._mkl_linear``, the op PyTorch's own
CPU compiler emits for frozen fp32 linears) removes it::

    measured on a 2-core Xeon VM, SmolLM2-135M, fp32, median decode step of 3 rounds
    (benchmarks/results/cpu_packed_weights.json, python -m benchmarks.cpu_packed_weights):
        8 rows     F.linear 110 ms    packed  89 ms    (1.23x)
        32 rows    F.linear 208 ms    packed 174 ms    (1.20x)
        the 32-prompt engine_vs_hf workload end to end: 1.10x output tokens/s

The packed copy costs as much memory as the weights. A single row (a lone decode) keeps
``F.linear``: MKL takes its GEMV path there, which reads the weight once anyway.

The packed product sums in another order than ``F.linear`` for a few rows, so logits differ
in the last bits (about 1e-6 relative); greedy parity with transformers is checked by the
same tests as before (tests/engine/test_greedy_parity.py).
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

# Rows below this go to F.linear (MKL's GEMV for one row: no repacking to save).
MIN_PACKED_ROWS = 2


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """MKL-packed fp32 GEMMs exist in this PyTorch build, for this device and dtype."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkl.is_available()
        and hasattr(torch.ops.mkl, "_mkl_linear")
        and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
    )


@dataclass(frozen=True, slots=True)
class PackedWeight:
    """``weight`` ``[out, in]`` and its packed copy; ``linear`` computes ``x W^T + b``."""

    weight: torch.Tensor
    packed: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor) -> PackedWeight:
        assert weight.dim() == 2 and weight.dtype == torch.float32, weight.shape
        # One batch-size hint for all row counts: the op takes each call's real count, and
        # ``agrees`` checks at load that MKL's layout does not depend on the hint.
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 64)
        return cls(weight, packed)

    def agrees(self, probe_rows: tuple[int, ...] = (3, 64)) -> bool:
        """Whether packed products equal ``F.linear``'s on a seeded probe at these row
        counts: the layout is MKL's own and packed with one batch-size hint, so a CPU or
        MKL build where either assumption fails is caught at load, not in the outputs."""
        gen = torch.Generator().manual_seed(0)
        for rows in probe_rows:
            x = torch.randn(rows, self.weight.shape[1], generator=gen)
            if not torch.allclose(self.linear(x), F.linear(x, self.weight), rtol=1e-4, atol=1e-4):
                return False
        return True

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows < MIN_PACKED_ROWS:
            return F.linear(x, self.weight, bias)
        out: torch.Tensor = torch.ops.mkl._mkl_linear(x, self.packed, self.weight, bias, rows)
        return out


def pack_weights(model: LlamaForCausalLM) -> bool:
    """Give every projection of ``model`` (its ``Linear`` modules and the LM head) a packed
    copy; if any packed copy disagrees with ``F.linear`` (``PackedWeight.agrees``), none is
    kept, a warning says so, and the model runs on ``F.linear``. Returns whether it packed."""
    head = model.model.embed_tokens if model.lm_head is None else model.lm_head
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    packed = [PackedWeight.of(m.weight) for m in linears]
    head_packed = PackedWeight.of(head.weight)
    if not all(p.agrees() for p in [*packed, head_packed]):
        log.warning("MKL-packed weights disagree with F.linear on this machine: not packing")
        return False
    for module, weight in zip(linears, packed, strict=True):
        module.packed = weight
    model.head_packed = head_packed
    return True
