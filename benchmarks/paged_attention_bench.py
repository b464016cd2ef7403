"""Decode attention: our Triton paged kernel vs PyTorch SDPA on K/V gathered out of the cache.

Llama-3-8B attention shapes (32 query heads, 8 KV heads, head size 128), bf16, block size 16,
a decode batch of 256 requests with contexts of 1k, 2k, 4k tokens and a mix of 1k..4k. Each
request's blocks are scattered at random through the cache, as after hours of serving.

Three timings per row:

    triton          paged_attention_triton reading K/V through the block tables
    sdpa            SDPA on K/V already gathered into dense [batch, kv_heads, ctx, 128]
                    tensors (a lower bound: the gather is free)
    gather + sdpa   the gather out of the paged cache, then SDPA (what the reference does)

``GB/s`` is the K/V bytes a decode must read divided by the Triton time. The table is
printed and written to ``benchmarks/results/paged_attention_<gpu>.json``.

    python -m benchmarks.paged_attention_bench [--batch 256] [--contexts 1024 2048 4096]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from infra.harness.paged_batch import make_batch
from kernels.attention import PagedAttentionInputs

NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 32, 8, 128, 16


def make_decode_batch(seq_lens: list[int], device: torch.device) -> PagedAttentionInputs:
    """One query token a request, bf16, Llama-3-8B heads; blocks scattered through the cache."""
    return make_batch(
        [1] * len(seq_lens),
        seq_lens,
        num_heads=NUM_HEADS,
        num_kv_heads=NUM_KV_HEADS,
        head_size=HEAD_SIZE,
        block_size=BLOCK_SIZE,
        dtype=torch.bfloat16,
        device=device,
    )


def gather_kv(b: PagedAttentionInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense ``[batch, kv_heads, max_ctx, head]`` K and V plus a ``[batch, 1, 1, max_ctx]`` mask."""
    ctx = b.max_seq_len
    blocks = b.block_table[:, : -(-ctx // BLOCK_SIZE)].long()
    k = b.k_cache[blocks].flatten(1, 2)[:, :ctx].transpose(1, 2)
    v = b.v_cache[blocks].flatten(1, 2)[:, :ctx].transpose(1, 2)
    valid = torch.arange(ctx, device=k.device)[None, :] < b.seq_lens[:, None]
    return k, v, valid[:, None, None, :]


def sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    return F.scaled_dot_product_attention(
        q[:, :, None], k, v, attn_mask=mask, scale=HEAD_SIZE**-0.5, enable_gqa=True
    )[:, :, 0]


def bench_row(name: str, seq_lens: list[int], device: torch.device) -> dict[str, float | str]:
    import triton.testing

    from kernels.attention_triton import paged_attention_triton

    b = make_decode_batch(seq_lens, device)

    def triton_fn() -> torch.Tensor:
        return paged_attention_triton(b)

    k, v, mask = gather_kv(b)
    # Uniform contexts need no mask, which lets SDPA pick its fastest (flash) backend.
    dense_mask = None if min(seq_lens) == max(seq_lens) else mask

    def gather_sdpa_fn() -> torch.Tensor:
        gk, gv, gmask = gather_kv(b)
        return sdpa(b.query, gk, gv, gmask if dense_mask is not None else None)

    timings: dict[str, Callable[[], torch.Tensor]] = {
        "triton_ms": triton_fn,
        "sdpa_ms": lambda: sdpa(b.query, k, v, dense_mask),
        "gather_sdpa_ms": gather_sdpa_fn,
    }
    row: dict[str, float | str] = {"case": name}
    for key, fn in timings.items():
        row[key] = round(float(triton.testing.do_bench(fn, warmup=25, rep=200)), 4)
    kv_bytes = 2 * sum(seq_lens) * NUM_KV_HEADS * HEAD_SIZE * b.k_cache.element_size()
    row["triton_gb_per_s"] = round(kv_bytes / (float(row["triton_ms"]) * 1e-3) / 1e9, 1)
    row["max_abs_diff"] = float(
        (triton_fn().float() - sdpa(b.query, k, v, mask).float()).abs().max()
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("paged_attention_bench needs a CUDA device; none is visible here.", file=sys.stderr)
        return 2

    from benchmarks.common import write_result

    torch.manual_seed(args.seed)
    device = torch.device("cuda")
    cases = [(f"ctx {n}", [n] * args.batch) for n in args.contexts]
    lo, hi = min(args.contexts), max(args.contexts)
    mixed = torch.randint(lo, hi + 1, (args.batch,)).tolist()
    cases.append((f"ctx {lo}..{hi}", mixed))
    rows = []
    for name, seq_lens in cases:
        rows.append(bench_row(name, seq_lens, device))
        torch.cuda.empty_cache()

    gpu = torch.cuda.get_device_name(0)
    table = Table(title=f"decode attention, batch {args.batch}, 32/8 heads x 128, bf16, {gpu}")
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    Console().print(table)
    shape = {"num_heads": NUM_HEADS, "num_kv_heads": NUM_KV_HEADS, "head_size": HEAD_SIZE}
    slug = re.sub(r"[^a-z0-9]+", "_", gpu.lower()).strip("_")
    config = {"batch": args.batch, "block_size": BLOCK_SIZE, "dtype": "bfloat16", **shape}
    path = write_result(f"paged_attention_{slug}", {"config": config, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
