"""The Triton LoRA shrink and expand against their PyTorch references, and the references
against a plain per-token loop (each token's own adapter, or none)."""

from __future__ import annotations

import pytest
import torch

from engine.models.lora import build_mapping_arrays
from kernels.lora import (
    lora_expand_reference,
    lora_expand_triton,
    lora_shrink_reference,
    lora_shrink_triton,
)
from tests.kernels.common import DTYPES, assert_close

NUM_SLOTS = 3
RANK = 16
SHARD_OFFSETS = (0, 64, 96, 128)  # q, k, v of a small GQA model


def _mapping(token_slots: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    sorted_ids, starts = build_mapping_arrays(token_slots, NUM_SLOTS)
    return torch.tensor(sorted_ids, device=device), torch.tensor(starts, device=device)


def _per_token(x, a, b, slots, y):  # type: ignore[no-untyped-def]
    """The definition, one token at a time: y + (x A^T) B^T per shard, nothing for slot -1."""
    out = y.clone().float()
    num_shards = len(SHARD_OFFSETS) - 1
    for t, slot in enumerate(slots):
        if slot < 0:
            continue
        u = (x[t].float() @ a[slot].float().T).reshape(num_shards, RANK)
        for s in range(num_shards):
            cols = slice(SHARD_OFFSETS[s], SHARD_OFFSETS[s + 1])
            out[t, cols] += u[s] @ b[slot, cols].float().T
    return out.to(y.dtype)


SLOT_MIXES = {
    "decode": [1, -1, 0, 2, 1],
    "all_base": [-1, -1, -1],
    "prefill": [2] * 40 + [-1] * 7 + [0] * 19,  # runs longer than one block of rows
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mix", list(SLOT_MIXES))
def test_matches_reference(device: torch.device, dtype: torch.dtype, mix: str) -> None:
    slots = SLOT_MIXES[mix]
    x = torch.randn(len(slots), 96, device=device).to(dtype)
    a = (0.2 * torch.randn(NUM_SLOTS, 3 * RANK, 96, device=device)).to(dtype)
    b = (0.2 * torch.randn(NUM_SLOTS, SHARD_OFFSETS[-1], RANK, device=device)).to(dtype)
    y = torch.randn(len(slots), SHARD_OFFSETS[-1], device=device).to(dtype)
    sorted_ids, starts = _mapping(slots, device)
    shrunk = lora_shrink_triton(x, a, sorted_ids, starts)
    torch.testing.assert_close(
        shrunk, lora_shrink_reference(x, a, sorted_ids, starts), atol=3e-2, rtol=3e-2
    )
    expected = lora_expand_reference(y.clone(), shrunk, b, SHARD_OFFSETS, sorted_ids, starts)
    actual = lora_expand_triton(y.clone(), shrunk, b, SHARD_OFFSETS, sorted_ids, starts)
    assert_close(actual, expected)
    base_rows = [t for t, s in enumerate(slots) if s < 0]
    assert torch.equal(actual[base_rows], y[base_rows]), "a base-model token was changed"


def test_reference_is_the_per_token_definition() -> None:
    slots = SLOT_MIXES["decode"]
    x, y = torch.randn(len(slots), 96), torch.randn(len(slots), SHARD_OFFSETS[-1])
    a = torch.randn(NUM_SLOTS, 3 * RANK, 96)
    b = torch.randn(NUM_SLOTS, SHARD_OFFSETS[-1], RANK)
    sorted_ids, starts = _mapping(slots, torch.device("cpu"))
    shrunk = lora_shrink_reference(x, a, sorted_ids, starts)
    out = lora_expand_reference(y.clone(), shrunk, b, SHARD_OFFSETS, sorted_ids, starts)
    torch.testing.assert_close(out, _per_token(x, a, b, slots, y), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out, y)


def test_rejects_bad_inputs(device: torch.device) -> None:
    sorted_ids, starts = _mapping([0, 1], device)
    x = torch.randn(2, 96, device=device)
    with pytest.raises(ValueError, match="dtype"):
        lora_shrink_triton(
            x, torch.randn(NUM_SLOTS, 48, 96, device=device).half(), sorted_ids, starts
        )
    with pytest.raises(ValueError, match="does not fit"):
        lora_shrink_triton(x, torch.randn(NUM_SLOTS, 48, 64, device=device), sorted_ids, starts)
    y, shrunk = torch.randn(2, 128, device=device), torch.zeros(2, 48, device=device)
    b = torch.randn(NUM_SLOTS, 128, RANK, device=device)
    with pytest.raises(ValueError, match="shard_offsets"):
        lora_expand_triton(y, shrunk, b, (0, 64, 100), sorted_ids, starts)


@pytest.mark.parametrize("rank", [8, 64])
def test_single_shard_ranks_below_and_above_a_tile(device: torch.device, rank: int) -> None:
    """An o/down projection (one shard) at a rank under the 16-wide minimum tile (masked)
    and one of a whole 64-wide tile."""
    slots = [0, 1, -1, 1, 2, 0]
    x = torch.randn(len(slots), 80, device=device)
    a = 0.2 * torch.randn(NUM_SLOTS, rank, 80, device=device)
    b = 0.2 * torch.randn(NUM_SLOTS, 40, rank, device=device)
    y = torch.randn(len(slots), 40, device=device)
    sorted_ids, starts = _mapping(slots, device)
    shrunk = lora_shrink_triton(x, a, sorted_ids, starts)
    assert_close(shrunk, lora_shrink_reference(x, a, sorted_ids, starts))
    expected = lora_expand_reference(y.clone(), shrunk, b, (0, 40), sorted_ids, starts)
    assert_close(lora_expand_triton(y.clone(), shrunk, b, (0, 40), sorted_ids, starts), expected)
