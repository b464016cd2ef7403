"""The PyTorch attention's per-step plan: decode groups by context length, same numbers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infra.harness.paged_batch import make_batch
from kernels.attention import paged_attention_reference, plan_attention
from tests.kernels.common import assert_close

# Decodes with contexts far apart, one prefill chunk and one short (speculative) query.
SEQ_LENS = [760, 12, 700, 400, 90, 380, 300, 40, 260, 120, 650, 33, 9]
Q_LENS = [1] * 11 + [33, 3]


def test_decodes_are_grouped_by_context_length() -> None:
    batch = make_batch(Q_LENS, SEQ_LENS, device=torch.device("cpu"))
    plan = plan_attention(batch.block_table, batch.query_start_loc, batch.seq_lens, 16)
    groups = [[SEQ_LENS[r] for r in g.query_rows.tolist()] for g in plan.decodes]
    # A group closes when a context falls below 0.6 of its longest, once it holds 4 rows.
    assert groups == [[760, 700, 650, 400], [380, 300, 260, 120], [90, 40, 12]]
    assert [g.ctx for g in plan.decodes] == [760, 380, 90]
    assert plan.short is not None and plan.short.rows == [12] and plan.prefill_rows == [11]


def test_grouped_decodes_match_per_request_attention() -> None:
    batch = make_batch(Q_LENS, SEQ_LENS, num_heads=4, num_kv_heads=2, device=torch.device("cpu"))
    out = paged_attention_reference(batch)
    block_size = batch.k_cache.shape[1]
    for r, (q_len, seq_len) in enumerate(zip(Q_LENS, SEQ_LENS, strict=True)):
        if q_len != 1:
            continue
        blocks = batch.block_table[r, : -(-seq_len // block_size)].long()
        k = batch.k_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)  # [kvh, ctx, hs]
        v = batch.v_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)
        row = int(batch.query_start_loc[r])
        q = batch.query[row : row + 1].transpose(0, 1)  # [heads, 1, hs]
        expected = F.scaled_dot_product_attention(
            q, k, v, scale=batch.scale, enable_gqa=True
        ).transpose(0, 1)
        assert_close(out[row : row + 1], expected)
