"""Batched edits of next-token logits: bias, min-tokens masking, penalties, top-k/top-p/min-p.

Each function takes a ``[N, V]`` fp32 tensor and per-row settings, touches only the rows whose
setting is on, and returns the edited tensor (in place where the rows are the whole batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_NEG_INF = float("-inf")


def apply_logit_bias(logits: Tensor, rows: list[int], cols: list[int], bias: list[float]) -> None:
    """Add ``bias[j]`` to ``logits[rows[j], cols[j]]`` in one scatter."""
    if not rows:
        return
    device = logits.device
    index = (torch.tensor(rows, device=device), torch.tensor(cols, device=device))
    logits.index_put_(index, torch.tensor(bias, device=device), accumulate=True)


def mask_tokens(logits: Tensor, rows: list[int], cols: list[int]) -> None:
    """Forbid token ``cols[j]`` in row ``rows[j]`` (used for min_tokens: no eos, no stop ids)."""
    if not rows:
        return
    device = logits.device
    index = (torch.tensor(rows, device=device), torch.tensor(cols, device=device))
    logits.index_put_(index, torch.tensor(_NEG_INF, device=device))


@dataclass(slots=True)
class PenaltyState:
    """What one request's penalties need, kept across steps so a step costs O(new tokens).

    ``prompt_mask`` marks tokens present in the prompt (repetition penalty looks at prompt and
    output); ``output_counts`` counts each output token (presence/frequency look at outputs
    only). ``num_counted`` output tokens have been folded into ``output_counts`` so far.
    """

    prompt_mask: Tensor  # [V] bool
    output_counts: Tensor  # [V] fp32
    num_counted: int = 0

    @classmethod
    def create(
        cls, prompt_token_ids: list[int], vocab_size: int, device: torch.device
    ) -> PenaltyState:
        prompt_mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        if prompt_token_ids:
            prompt_mask[torch.tensor(prompt_token_ids, device=device)] = True
        return cls(prompt_mask, torch.zeros(vocab_size, dtype=torch.float32, device=device))

    def catch_up(self, output_token_ids: list[int]) -> None:
        """Count the output tokens appended since the last call (usually exactly one)."""
        new = output_token_ids[self.num_counted :]
        if new:
            index = torch.tensor(new, device=self.output_counts.device)
            self.output_counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float32))
            self.num_counted += len(new)


def apply_penalties(
    logits: Tensor,
    states: list[PenaltyState],
    repetition: list[float],
    presence: list[float],
    frequency: list[float],
) -> Tensor:
    """Penalise the rows of ``logits`` (one per state); returns the new ``[N, V]`` rows.

    Repetition (Hugging Face): a token seen in prompt or output has its logit divided by the
    penalty when positive and multiplied when negative. Presence/frequency (OpenAI): subtract
    ``presence * [count > 0] + frequency * count`` over output tokens.
    """
    device = logits.device
    counts = torch.stack([s.output_counts for s in states])
    in_output = counts > 0
    seen = in_output | torch.stack([s.prompt_mask for s in states])
    rep = torch.tensor(repetition, device=device).unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    pres = torch.tensor(presence, device=device).unsqueeze(1)
    freq = torch.tensor(frequency, device=device).unsqueeze(1)
    return logits - freq * counts - pres * in_output.to(logits.dtype)


def apply_top_k_top_p(logits: Tensor, top_k: list[int], top_p: list[float]) -> Tensor:
    """Set to -inf every token outside each row's top-k and nucleus (``top_k <= 0``: off).

    Rows with only top-k on use ``torch.topk`` to find their k-th logit; only rows with top-p on
    pay for a full sort of the vocabulary. Ties with the k-th logit are kept.
    """
    vocab_size = logits.shape[1]
    ks = [k if 0 < k < vocab_size else vocab_size for k in top_k]
    k_rows = [
        i for i, (k, p) in enumerate(zip(ks, top_p, strict=True)) if k < vocab_size and p >= 1
    ]
    p_rows = [i for i, p in enumerate(top_p) if p < 1.0]
    if k_rows:
        logits[k_rows] = _mask_top_k(logits[k_rows], [ks[i] for i in k_rows])
    if p_rows:
        logits[p_rows] = _mask_top_p(
            logits[p_rows], [ks[i] for i in p_rows], [top_p[i] for i in p_rows]
        )
    return logits


def _mask_top_k(logits: Tensor, ks: list[int]) -> Tensor:
    k = torch.tensor(ks, device=logits.device).unsqueeze(1)
    top = logits.topk(max(ks), dim=-1).values
    kth = top.gather(1, k - 1)
    return logits.masked_fill(logits < kth, _NEG_INF)


def _mask_top_p(logits: Tensor, ks: list[int], ps: list[float]) -> Tensor:
    """Nucleus over the descending sort; a token is dropped when the mass strictly before it
    already exceeds ``p``, so the most likely token always survives::

        sorted probs   0.5   0.3   0.15  0.05        p = 0.7
        mass before    0.0   0.5   0.8   0.95
        kept           yes   yes   no    no
    """
    device = logits.device
    ordered, order = logits.sort(dim=-1, descending=True, stable=True)
    position = torch.arange(logits.shape[1], device=device).unsqueeze(0)
    ordered = ordered.masked_fill(
        position >= torch.tensor(ks, device=device).unsqueeze(1), _NEG_INF
    )
    probs = ordered.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    ordered = ordered.masked_fill(
        mass_before > torch.tensor(ps, device=device).unsqueeze(1), _NEG_INF
    )
    return torch.empty_like(logits).scatter_(1, order, ordered)


def apply_min_p(logits: Tensor, min_p: list[float]) -> Tensor:
    """Drop tokens whose probability is below ``min_p`` times the row's top probability."""
    rows = [i for i, p in enumerate(min_p) if p > 0.0]
    if not rows:
        return logits
    sub = logits[rows]
    probs = sub.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * torch.tensor(
        [min_p[i] for i in rows], device=logits.device
    ).unsqueeze(1)
    logits[rows] = sub.masked_fill(probs < threshold, _NEG_INF)
    return logits
