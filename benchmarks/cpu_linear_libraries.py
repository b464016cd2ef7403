"""SmolLM2's projections through four CPU GEMM paths, same weights, same run.

Every projection of SmolLM2-135M-Instruct (its 120 layer projections and the LM head, the
checkpoint's own fp32 weights, 538 MB: far past any cache) once, at row counts from a single
decode row to a prefill chunk, through:

- ``f_linear``: ``F.linear``, MKL with the weight in PyTorch's layout (repacked every call);
- ``mkl_packed``: MKL's packed GEMM, the weight packed once (``cblas_sgemm_pack``, what the
  engine used before; a single row goes to ``F.linear``, MKL's GEMV, as it did there);
- ``onednn_reordered``: oneDNN with the weight reordered once (``Layout.ONEDNN``), called
  directly: what the engine runs where no C compiler is found, except that on one thread a
  single row goes to ``F.linear`` there (engine/models/packed_weights.py), which this arm
  measures the reason for;
- ``panels``: kernels/cpu_linear.c with the weight packed once into panels
  (``Layout.PANELS``): what the engine runs.

The arms alternate within each repeat; the result is each arm's median milliseconds per
pass and the ratios to ``onednn_reordered``. Run it with the thread count the engine
gets (torch's default), or with ``OMP_NUM_THREADS=1`` for one thread.

    python -m benchmarks.cpu_linear_libraries [--repeats 7] [--rows 1,2,5,8,16,33,64,256]
        [--name cpu_linear_libraries]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import parse_options, write_result
from engine import LLM
from engine.model_fetch import fetch_model
from engine.models.layers import Linear
from engine.models.packed_weights import Layout, PackedWeight

ROW_COUNTS = "1,2,5,8,16,33,64,256"  # from a decode row to a prefill chunk


def model_weights() -> list[torch.Tensor]:
    llm = LLM(str(fetch_model("smollm2-135m-instruct")), dtype="float32", cpu_packed_weights=False)
    model = llm.engine.runner.model
    head = model.model.embed_tokens if model.lm_head is None else model.lm_head
    linears: list[torch.Tensor] = [m.weight for m in model.modules() if isinstance(m, Linear)]
    return [*linears, head.weight]


def arms(weights: list[torch.Tensor]) -> dict[str, Callable[[int, torch.Tensor], object]]:
    mkl = [torch.ops.mkl._mkl_reorder_linear_weight(w, 64) for w in weights]
    onednn = [PackedWeight.of(w, Layout.ONEDNN) for w in weights]
    panels = [PackedWeight.of(w, Layout.PANELS) for w in weights]

    def mkl_packed(i: int, x: torch.Tensor) -> object:
        if x.shape[0] == 1:
            return F.linear(x, weights[i])
        return torch.ops.mkl._mkl_linear(x, mkl[i], weights[i], None, x.shape[0])

    return {
        "f_linear": lambda i, x: F.linear(x, weights[i]),
        "mkl_packed": mkl_packed,
        "onednn_reordered": lambda i, x: torch.ops.mkldnn._linear_pointwise(
            x, onednn[i].packed, None, "none", [], ""
        ),
        "panels": lambda i, x: panels[i].linear(x),
    }


def pass_ms(
    weights: list[torch.Tensor], arm: Callable[[int, torch.Tensor], object], rows: int
) -> float:
    inputs = {n: torch.randn(rows, n) for n in {w.shape[1] for w in weights}}
    start = time.perf_counter()
    for i, w in enumerate(weights):
        arm(i, inputs[w.shape[1]])
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    args = parse_options(__doc__, repeats=7, rows=ROW_COUNTS, name="cpu_linear_libraries")
    try:
        row_counts = [int(n) for n in args.rows.split(",")]
    except ValueError:
        row_counts = []
    if not row_counts or min(row_counts) < 1:
        raise SystemExit(f"--rows takes comma-separated row counts of 1 or more, not {args.rows!r}")
    weights = model_weights()
    paths = arms(weights)
    per_rows: dict[str, Any] = {}
    for rows in row_counts:
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, arm in paths.items():
                times[name].append(pass_ms(weights, arm, rows))
        medians = {name: statistics.median(t) for name, t in times.items()}
        base = medians["onednn_reordered"]
        per_rows[str(rows)] = {
            "median_ms": {k: round(v, 2) for k, v in medians.items()},
            "over_onednn": {k: round(v / base, 3) for k, v in medians.items()},
        }
        print(f"{rows:4d} rows: " + ", ".join(f"{k} {v:.1f} ms" for k, v in medians.items()))
    result = {
        "workload": {
            "model": "SmolLM2-135M-Instruct (fp32)",
            "projections": len(weights),
            "weight_bytes": sum(w.numel() * 4 for w in weights),
            "repeats": args.repeats,
            "torch_threads": torch.get_num_threads(),
        },
        "rows": per_rows,
    }
    print(write_result(args.name, result))


if __name__ == "__main__":
    main()
