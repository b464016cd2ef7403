"""One token per row from temperature-scaled logits, in one pass: the Gumbel-max trick.

``argmax_i(l_i / T + G_i)`` with ``G_i = -log(-log U_i)``, ``U_i ~ U(0, 1)`` draws token ``i``
with probability ``softmax(l / T)_i``. It is the sampler's exponential race
``argmax_i(p_i / E_i)`` with ``E_i = -log U_i`` seen through a log (``log p_i = l_i / T - log
Z``, and ``Z`` does not move the argmax), so it needs no softmax, no normalisation and no
``[rows, vocab]`` temporaries: the kernel reads each logit once. For a decode batch of 256
over a 150k vocabulary that is one read of the logits instead of about ten passes of
PyTorch ops over fp32 copies of them.

A logit of ``-inf`` (a masked token) is never drawn; a row of only ``-inf`` returns token 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch_checks import (
    FLOAT_DTYPES,
    check_dtype,
    check_rank,
    check_shape,
    check_unit_stride,
    pointers,
)

MAX_SEED = 2**31 - 2**24  # the kernel adds the row index to the seed


def sample_gumbel_reference(
    logits: torch.Tensor,  # [num_rows, vocab_size]
    inv_temperature: torch.Tensor,  # [num_rows] fp32, 1 / T
    seed: int,
) -> torch.Tensor:  # [num_rows] int64
    """The same distribution as the kernel, from PyTorch's generator (not the same draws)."""
    generator = torch.Generator(device=logits.device).manual_seed(seed)
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform))
    return (logits.float() * inv_temperature[:, None] + gumbel).argmax(dim=-1)


@triton.jit
def _sample_gumbel_kernel(
    partial_val_ptr,  # [num_rows, num_splits] fp32: each split's best score
    partial_idx_ptr,  # [num_rows, num_splits] int32: and its token
    logits_ptr,  # [num_rows, vocab_size]
    inv_temperature_ptr,  # [num_rows] fp32
    seed,
    vocab_size,
    split_size,  # tokens per split, a multiple of BLOCK
    stride_row,
    num_splits,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    inv_t = tl.load(inv_temperature_ptr + row)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    best_val = tl.full([BLOCK], float("-inf"), tl.float32)  # per lane
    best_idx = tl.zeros([BLOCK], tl.int32)
    begin = split * split_size
    for start in range(begin, begin + split_size, BLOCK):
        cols = start + tl.arange(0, BLOCK)  # [BLOCK]
        mask = cols < vocab_size
        logit = tl.load(row_ptr + cols, mask=mask, other=float("-inf")).to(tl.float32)
        # Philox keyed by (seed + row): each row its own stream, the token its counter.
        uniform = tl.rand(seed + row, cols)  # [BLOCK] in [0, 1)
        score = logit * inv_t - tl.log(-tl.log(uniform))
        better = mask & (score > best_val)  # strict: a lane keeps its first maximum
        best_val = tl.where(better, score, best_val)
        best_idx = tl.where(better, cols, best_idx)
    top = tl.max(best_val, axis=0)
    # The smallest token among the lanes that reached the maximum (all lanes when the range
    # holds only -inf: token 0 of the lanes never updated).
    token = tl.min(tl.where(best_val == top, best_idx, vocab_size), axis=0)
    tl.store(partial_val_ptr + row * num_splits + split, top)
    tl.store(partial_idx_ptr + row * num_splits + split, token)


def sample_gumbel_triton(
    logits: torch.Tensor,  # [num_rows, vocab_size]
    inv_temperature: torch.Tensor,  # [num_rows] fp32
    seed: int,
) -> torch.Tensor:  # [num_rows] int64
    """``sample_gumbel_reference``'s distribution in one launch plus a tiny reduction.

    Grid ``(num_rows, num_splits)``: a row's vocabulary is cut into ``num_splits`` ranges so
    that a small batch still spreads over the GPU; each program keeps the best score of its
    range and the row's winner is the best of its splits (the lower token on a tie).
    """
    check_rank("logits", logits, 2)
    check_dtype("logits", logits, FLOAT_DTYPES)
    check_unit_stride("logits", logits)
    check_dtype("inv_temperature", inv_temperature, (torch.float32,))
    check_shape("inv_temperature", inv_temperature, (logits.shape[0],))
    tensors = pointers(logits=logits, inv_temperature=inv_temperature)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
    num_rows, vocab_size = logits.shape
    if num_rows == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    block = min(2048, triton.next_power_of_2(max(vocab_size, 16)))
    num_blocks = triton.cdiv(vocab_size, block)
    # About 512 programs in all (a few per SM), never a split smaller than one block.
    num_splits = max(1, min(num_blocks, 512 // num_rows))
    split_size = triton.cdiv(num_blocks, num_splits) * block
    num_splits = triton.cdiv(vocab_size, split_size)
    partial_val = torch.empty(num_rows, num_splits, dtype=torch.float32, device=logits.device)
    partial_idx = torch.empty(num_rows, num_splits, dtype=torch.int32, device=logits.device)
    _sample_gumbel_kernel[(num_rows, num_splits)](
        partial_val_ptr=partial_val,
        partial_idx_ptr=partial_idx,
        **tensors,
        seed=seed,
        vocab_size=vocab_size,
        split_size=split_size,
        stride_row=logits.stride(0),
        num_splits=num_splits,
        BLOCK=block,
    )
    best_split = partial_val.argmax(dim=1, keepdim=True)  # first split on a tie
    return partial_idx.gather(1, best_split).squeeze(1).long()
