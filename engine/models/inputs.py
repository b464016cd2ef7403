"""Turning a scheduler step into the flat tensors one forward pass reads.

Every step's inputs are written into the same preallocated buffers: host arrays (pinned when
the model runs on CUDA) filled with numpy, then one non-blocking copy per tensor into device
buffers of fixed address. Building fresh small tensors instead costs an allocation and a
synchronous copy from pageable memory for each, per step, and CUDA graphs need fixed input
addresses anyway.

The host buffers are reused by the next step; that is safe because the engine waits for each
step's sampled tokens (which follow the copies on the same stream) before it builds the next.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.models.attention import AttentionMetadata
from engine.models.lora import LoRAMapping, build_mapping_arrays
from engine.scheduler_output import ScheduledRequest


@dataclass(slots=True)
class ModelInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    attn: AttentionMetadata
    # [num_logits] int64: the last row of each sampled request, or its last 1 + d rows when it
    # verifies d drafts (speculative decoding)
    logits_indices: torch.Tensor
    num_reqs: int  # real requests; rows past them (a padded decode batch) are padding
    graph_size: int | None = None  # set when padded for the CUDA graph of that batch size
    lora: LoRAMapping | None = None  # each token's adapter slot, when LoRA is enabled


class _Buffer:
    """One input tensor: a host array and, on CUDA, its device twin (on the CPU, the same)."""

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device) -> None:
        on_cuda = device.type == "cuda"
        self.host = torch.zeros(size, dtype=dtype, pin_memory=on_cuda)
        self.np: np.ndarray = self.host.numpy()
        self.device = torch.zeros(size, dtype=dtype, device=device) if on_cuda else self.host
        self._copies = on_cuda

    def upload(self, count: int) -> torch.Tensor:
        """The first ``count`` entries on the device (copied there without blocking)."""
        if self._copies:
            self.device[:count].copy_(self.host[:count], non_blocking=True)
        return self.device[:count]


class InputBuffers:
    """Fixed-size buffers for steps of up to ``max_num_tokens`` tokens and ``max_num_reqs``
    requests whose block tables are at most ``max_blocks_per_req`` long; with ``max_loras``
    adapter slots, also each step's ``LoRAMapping``."""

    def __init__(
        self,
        max_num_tokens: int,
        max_num_reqs: int,
        max_blocks_per_req: int,
        block_size: int,
        device: torch.device,
        max_loras: int = 0,
    ) -> None:
        self.max_num_tokens = max_num_tokens
        self.max_num_reqs = max_num_reqs
        self.max_blocks_per_req = max_blocks_per_req
        self.block_size = block_size
        self.input_ids = _Buffer(max_num_tokens, torch.int64, device)
        self.positions = _Buffer(max_num_tokens, torch.int64, device)
        self.slot_mapping = _Buffer(max_num_tokens, torch.int64, device)
        self.block_table = _Buffer(max_num_reqs * max_blocks_per_req, torch.int32, device)
        self.query_start_loc = _Buffer(max_num_reqs + 1, torch.int32, device)
        self.seq_lens = _Buffer(max_num_reqs, torch.int32, device)
        self.logits_indices = _Buffer(max(max_num_reqs, max_num_tokens), torch.int64, device)
        self.max_loras = max_loras
        if max_loras:
            self.lora_sorted_token_ids = _Buffer(max_num_tokens, torch.int32, device)
            self.lora_slot_start = _Buffer(max_loras + 1, torch.int32, device)

    def build(
        self,
        scheduled: Sequence[ScheduledRequest],
        pad_to: int | None = None,
        max_seq_len: int | None = None,
    ) -> ModelInputs:
        """Concatenate the scheduled chunks and derive every index from a few per-request
        numbers. For request ``r`` with chunk length ``q_r`` starting at position ``s_r``::

            query_start_loc = [0, q_0, q_0 + q_1, ...]          seq_lens[r] = s_r + q_r
            token t of r:  positions[t] = s_r + (t - query_start_loc[r])
                           slot_mapping[t] = block_table[r, positions[t] // block_size]
                                             * block_size + positions[t] % block_size

        ``pad_to`` (decode steps only: one token per request, all sampled) appends padding
        requests up to that many and gives the block table its full width, so the tensors have
        the shapes a captured CUDA graph was recorded with. A padding row decodes token 0 at
        position 0 against one cached position of block 0, and writes no KV (slot -1).
        ``max_seq_len`` overrides the metadata's bound (a graph is captured with the largest).
        """
        assert scheduled, "an empty step has no forward pass"
        num_reqs = len(scheduled)
        q_lens = np.fromiter((s.num_new_tokens for s in scheduled), np.int64, num_reqs)
        starts = np.fromiter((s.start_position for s in scheduled), np.int64, num_reqs)
        num_tokens = int(q_lens.sum())
        assert num_reqs <= self.max_num_reqs and num_tokens <= self.max_num_tokens, (
            f"a step of {num_reqs} requests and {num_tokens} tokens exceeds the runner's "
            f"buffers ({self.max_num_reqs}, {self.max_num_tokens})"
        )
        padded = num_reqs if pad_to is None else pad_to
        assert pad_to is None or (num_tokens == num_reqs <= pad_to <= self.max_num_reqs)
        seq_lens = starts + q_lens
        width = (
            self.max_blocks_per_req
            if pad_to is not None
            else max(len(s.block_ids) for s in scheduled)
        )
        assert width <= self.max_blocks_per_req, "a block table is longer than max_model_len"

        query_start_loc = self.query_start_loc.np
        query_start_loc[0] = 0
        np.cumsum(q_lens, out=query_start_loc[1 : num_reqs + 1])
        self.seq_lens.np[:num_reqs] = seq_lens
        self.input_ids.np[:num_tokens] = np.fromiter(
            itertools.chain.from_iterable(s.token_ids for s in scheduled), np.int64, num_tokens
        )
        table = self.block_table.np[: padded * width].reshape(padded, width)
        table.fill(0)
        for row, s in zip(table, scheduled, strict=False):
            row[: len(s.block_ids)] = s.block_ids
        assert all(len(s.block_ids) * self.block_size >= n for s, n in zip(scheduled, seq_lens))

        positions = self.positions.np[:num_tokens]
        if num_tokens == num_reqs:  # decodes (and one-token chunks): no per-token expansion
            request_of_token = np.arange(num_reqs)
            positions[:] = starts
        else:
            request_of_token = np.repeat(np.arange(num_reqs), q_lens)
            offsets = np.arange(num_tokens) - query_start_loc[:num_reqs].repeat(q_lens)
            positions[:] = starts.repeat(q_lens) + offsets
        blocks = table[request_of_token, positions // self.block_size].astype(np.int64)
        self.slot_mapping.np[:num_tokens] = blocks * self.block_size + positions % self.block_size
        num_sampled = self._fill_logits_indices(scheduled, query_start_loc[1 : num_reqs + 1])

        if padded > num_reqs:
            self.input_ids.np[num_tokens:padded] = 0
            self.positions.np[num_tokens:padded] = 0
            self.slot_mapping.np[num_tokens:padded] = -1
            query_start_loc[num_reqs + 1 : padded + 1] = np.arange(num_reqs + 1, padded + 1)
            self.seq_lens.np[num_reqs:padded] = 1
            self.logits_indices.np[num_sampled:padded] = np.arange(num_sampled, padded)
            num_tokens = num_sampled = padded

        attn = AttentionMetadata(
            slot_mapping=self.slot_mapping.upload(num_tokens),
            block_table=self.block_table.upload(padded * width).view(padded, width),
            query_start_loc=self.query_start_loc.upload(padded + 1),
            seq_lens=self.seq_lens.upload(padded),
            max_query_len=int(q_lens.max()),
            max_seq_len=int(seq_lens.max()) if max_seq_len is None else max_seq_len,
        )
        lora = None
        if self.max_loras:
            req_slots = np.fromiter((s.request.lora_slot for s in scheduled), np.int64, num_reqs)
            token_slots = np.full(num_tokens, -1, dtype=np.int64)  # padding rows: no adapter
            token_slots[: int(q_lens.sum())] = req_slots[request_of_token]
            lora = self._build_lora(token_slots, always=pad_to is not None)
        return ModelInputs(
            input_ids=self.input_ids.upload(num_tokens),
            positions=self.positions.upload(num_tokens),
            attn=attn,
            logits_indices=self.logits_indices.upload(num_sampled),
            num_reqs=num_reqs,
            graph_size=pad_to,
            lora=lora,
        )

    def _build_lora(self, token_slots: np.ndarray, always: bool) -> LoRAMapping:
        """Group the step's tokens by adapter slot; ``always``: a graph step, whose LoRA
        launches run even when no token has an adapter (the graph holds them)."""
        sorted_ids, slot_start = build_mapping_arrays(token_slots, self.max_loras)
        num_tokens = len(token_slots)
        self.lora_sorted_token_ids.np[:num_tokens] = sorted_ids
        self.lora_slot_start.np[:] = slot_start
        return LoRAMapping(
            sorted_token_ids=self.lora_sorted_token_ids.upload(num_tokens),
            slot_start=self.lora_slot_start.upload(self.max_loras + 1),
            active=always or bool(slot_start[-1]),
        )

    def _fill_logits_indices(
        self, scheduled: Sequence[ScheduledRequest], query_ends: np.ndarray
    ) -> int:
        """The rows the model turns into logits; returns how many. A request verifying ``d``
        drafts gets its last ``1 + d`` rows, in order::

            query_ends = [5, 9]   num_logits = [1, 3]   ->   [4, 6, 7, 8]
        """
        num_logits = np.fromiter((s.num_logits for s in scheduled), np.int64, len(scheduled))
        total = int(num_logits.sum())
        out = self.logits_indices.np[:total]
        if total == int(np.count_nonzero(num_logits)):  # no drafts: one row per sampled request
            out[:] = query_ends[num_logits > 0] - 1
            return total
        firsts = np.cumsum(num_logits) - num_logits
        out[:] = np.repeat(query_ends - num_logits, num_logits) + (
            np.arange(total) - np.repeat(firsts, num_logits)
        )
        return total
