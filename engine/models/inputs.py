"""Turning a scheduler step into the flat tensors one forward pass reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.models.attention import AttentionMetadata
from engine.scheduler_output import ScheduledRequest


@dataclass(slots=True)
class ModelInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    attn: AttentionMetadata
    logits_indices: torch.Tensor  # [num_sampled] int64: the last row of each sampled request


def build_model_inputs(
    scheduled: Sequence[ScheduledRequest], block_size: int, device: torch.device
) -> ModelInputs:
    """Concatenate the scheduled chunks and derive every index from a few per-request numbers.

    For request ``r`` with chunk length ``q_r`` starting at position ``s_r``::

        query_start_loc = [0, q_0, q_0 + q_1, ...]          seq_lens[r] = s_r + q_r
        token t of r:  positions[t] = s_r + (t - query_start_loc[r])
                       slot_mapping[t] = block_table[r, positions[t] // block_size] * block_size
                                         + positions[t] % block_size
    """
    assert scheduled, "an empty step has no forward pass"
    q_lens = [s.num_new_tokens for s in scheduled]
    starts = [s.start_position for s in scheduled]
    seq_lens_list = [s + q for s, q in zip(starts, q_lens, strict=True)]
    width = max(len(s.block_ids) for s in scheduled)
    for s, seq_len in zip(scheduled, seq_lens_list, strict=True):
        assert s.num_new_tokens > 0 and len(s.block_ids) * block_size >= seq_len
    table = [s.block_ids + [0] * (width - len(s.block_ids)) for s in scheduled]
    token_ids = [t for s in scheduled for t in s.token_ids]

    def to_device(values: list[int] | list[list[int]], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    q_lens_t = to_device(q_lens, torch.int64)
    query_start_loc = torch.zeros(len(scheduled) + 1, dtype=torch.int64, device=device)
    torch.cumsum(q_lens_t, dim=0, out=query_start_loc[1:])
    block_table = to_device(table, torch.int32)
    request_of_token = torch.repeat_interleave(
        torch.arange(len(scheduled), device=device), q_lens_t, output_size=len(token_ids)
    )
    offsets = torch.arange(len(token_ids), device=device) - query_start_loc[request_of_token]
    positions = to_device(starts, torch.int64)[request_of_token] + offsets
    blocks = block_table[request_of_token, positions // block_size].long()
    slot_mapping = blocks * block_size + positions % block_size
    sampled_rows = [i for i, s in enumerate(scheduled) if s.sample]
    logits_indices = query_start_loc[1:][to_device(sampled_rows, torch.int64)] - 1
    attn = AttentionMetadata(
        slot_mapping=slot_mapping,
        block_table=block_table,
        query_start_loc=query_start_loc.to(torch.int32),
        seq_lens=to_device(seq_lens_list, torch.int32),
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens_list),
    )
    return ModelInputs(to_device(token_ids, torch.int64), positions, attn, logits_indices)
