"""The fused Gumbel-max sampler against the distribution it must draw from.

Kernel and reference use different generators, so they are compared by what they draw: the
frequencies of each token over many rows against ``softmax(logits / T)``. The CPU interpreter
runs a few hundred rows (about 8 ms a row); CUDA runs many more and is held to a tighter bound.
"""

from __future__ import annotations

import pytest
import torch

from kernels.sampling import MAX_SEED, sample_gumbel_reference, sample_gumbel_triton

LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0, float("-inf")]


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_draws_follow_the_tempered_softmax(
    impl: str, dtype: torch.dtype, device: torch.device
) -> None:
    rows = 50_000 if device.type == "cuda" or impl == "reference" else 400
    temperature = 0.5
    logits = torch.tensor(LOGITS, device=device).to(dtype).repeat(rows, 1)
    inv_t = torch.full((rows,), 1 / temperature, device=device)
    sample = sample_gumbel_triton if impl == "triton" else sample_gumbel_reference
    tokens = sample(logits, inv_t, seed=1234)
    assert tokens.dtype == torch.int64 and tokens.shape == (rows,)
    freq = torch.bincount(tokens.cpu(), minlength=len(LOGITS)).double() / rows
    expected = torch.softmax(torch.tensor(LOGITS).to(dtype).double() / temperature, dim=0)
    # 4.5 standard deviations of a frequency at p(1 - p) <= 1/4
    assert (freq - expected).abs().max() < 4.5 * (0.25 / rows) ** 0.5
    assert freq[-1] == 0  # a -inf logit is never drawn
    # T = 2 would put 0.45 on token 0; T = 0.5 puts 0.84 there: the scale is 1/T, not T
    assert freq[0] > 0.7


def test_rows_draw_independently_and_the_seed_decides(device: torch.device) -> None:
    logits = torch.zeros(64, 32, device=device)  # uniform over 32 tokens
    inv_t = torch.ones(64, device=device)
    first = sample_gumbel_triton(logits, inv_t, seed=5)
    assert torch.equal(first, sample_gumbel_triton(logits, inv_t, seed=5))
    assert not torch.equal(first, sample_gumbel_triton(logits, inv_t, seed=6))
    assert len(set(first.tolist())) > 16  # not one shared stream


def test_a_cold_temperature_is_argmax_across_vocabulary_splits(device: torch.device) -> None:
    """A large vocabulary with few rows is cut into splits; the winner of the best split
    must come back, including when it sits in the last, partial block."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50_000, generator=gen)
    logits[2, 49_999] = 100.0
    logits = logits.to(device)
    tokens = sample_gumbel_triton(logits, torch.full((3,), 1e4, device=device), seed=0)
    assert tokens.tolist() == logits.argmax(dim=1).tolist()
    assert tokens[2] == 49_999


def test_all_masked_row_and_bad_arguments(device: torch.device) -> None:
    logits = torch.full((2, 40), float("-inf"), device=device)
    logits[1, 7] = 0.0
    tokens = sample_gumbel_triton(logits, torch.ones(2, device=device), seed=3)
    assert tokens.tolist() == [0, 7]
    with pytest.raises(ValueError, match="seed"):
        sample_gumbel_triton(logits, torch.ones(2, device=device), seed=MAX_SEED + 1)
    with pytest.raises(ValueError, match="inv_temperature"):
        sample_gumbel_triton(logits, torch.ones(3, device=device), seed=3)
    with pytest.raises(ValueError, match="float32"):
        sample_gumbel_triton(logits, torch.ones(2, device=device, dtype=torch.float64), seed=3)
    assert sample_gumbel_triton(logits[:0], torch.ones(0, device=device), seed=3).shape == (0,)
