"""Verifying drafted tokens against the target model's logits (speculative decoding).

A request that verifies ``d`` drafts has ``d + 1`` logits rows: row ``i`` is the target's
distribution for the token after ``d1 .. di``. Acceptance walks the rows in order::

    drafts:   d1   d2   d3            greedy: keep di while di == argmax(row i-1)
    rows:     r0   r1   r2   r3       random: keep di with probability p_{i-1}(di)
    output:   d1 d2 + one token from the first row that rejected (or r3 when none did)

Random rows are rejection sampling (Leviathan et al. 2023; Chen et al. 2023) with a draft
distribution that puts all its mass on the draft token: accepting ``x`` with probability
``min(1, p(x) / q(x)) = p(x)`` and, on rejection, sampling from ``max(0, p - q)``, which is
``p`` without ``x``, leaves every output token distributed exactly as ``p``. Both proposers
guess deterministically, so this is exact for either. A seeded request draws its uniforms and
its resampling noise from its own generator, so it stays reproducible.

Only requests whose rows are processed alike at every position may verify drafts (no
penalties, past ``min_tokens``): row ``i`` then equals what a plain decode after ``d1 .. di``
would have sampled from. A constrained request's rows carry the grammar's mask after
``d1 .. di`` (``StructuredOutputs.fill_draft_bitmask``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.grammar import GrammarBitmask
from engine.request import Request
from engine.sampler import Sampler, TokenLogprobs, gather_logprobs, greedy
from engine.scheduler_output import ScheduledRequest


@dataclass(slots=True)
class VerifyOutput:
    token_ids: list[list[int]]  # per request: the accepted drafts, then one token of its own
    logprobs: list[list[TokenLogprobs | None]]  # one per token (None where not asked)


def verify(
    sampler: Sampler,
    logits: Tensor,
    requests: list[Request],
    drafts: list[list[int]],
    allowed: GrammarBitmask | None = None,
) -> VerifyOutput:
    """``logits`` has ``1 + len(drafts[j])`` rows per request, in order; not modified.
    ``allowed`` masks the rows of constrained requests (``fill_draft_bitmask``)."""
    row_requests = [r for r, d in zip(requests, drafts, strict=True) for _ in range(len(d) + 1)]
    assert logits.shape[0] == len(row_requests)
    raw = logits.float()
    if allowed is not None:
        raw = raw.clone() if raw is logits else raw
        allowed.apply(raw)
    processed = sampler.process(raw, row_requests)
    greedy_choice = greedy(processed).tolist()
    random_rows = [i for i, r in enumerate(row_requests) if not r.sampling_params.is_greedy]
    probs = None
    if random_rows:
        probs = sampler.probs([row_requests[i] for i in random_rows], processed[random_rows])
    random_index = {row: i for i, row in enumerate(random_rows)}
    token_ids: list[list[int]] = []
    emitted_rows: list[int] = []
    first = 0
    for request, draft in zip(requests, drafts, strict=True):
        if request.sampling_params.is_greedy:
            tokens = _accept_greedy(greedy_choice[first : first + len(draft) + 1], draft)
        else:
            assert probs is not None
            start = random_index[first]
            rows = probs[start : start + len(draft) + 1]
            tokens = _accept_random(rows, draft, sampler.generator_for(request, rows.device))
        token_ids.append(tokens)
        emitted_rows.extend(range(first, first + len(tokens)))
        first += len(draft) + 1
    flat = [t for tokens in token_ids for t in tokens]
    emitted = gather_logprobs(
        raw[emitted_rows],
        torch.tensor(flat, device=raw.device),
        flat,
        [row_requests[i] for i in emitted_rows],
    )
    logprobs, at = [], 0
    for tokens in token_ids:
        logprobs.append(emitted[at : at + len(tokens)])
        at += len(tokens)
    return VerifyOutput(token_ids, logprobs)


def _accept_greedy(choice: list[int], draft: list[int]) -> list[int]:
    """The longest prefix of ``draft`` the target agrees with, then the target's own token."""
    accepted = 0
    while accepted < len(draft) and draft[accepted] == choice[accepted]:
        accepted += 1
    return [*draft[:accepted], choice[accepted]]


def _accept_random(probs: Tensor, draft: list[int], generator: torch.Generator) -> list[int]:
    """``probs`` is ``[len(draft) + 1, V]``; one uniform per draft, one ``[V]`` noise draw."""
    device = probs.device
    uniforms = torch.rand(len(draft), generator=generator, device=device).tolist()
    draft_probs = probs[torch.arange(len(draft), device=device), torch.tensor(draft, device=device)]
    accepted = 0
    for u, p in zip(uniforms, draft_probs.tolist(), strict=True):
        if u >= p:
            break
        accepted += 1
    row = probs[accepted].clone()
    if accepted < len(draft):
        row[draft[accepted]] = 0.0  # the residual max(0, p - q) of a one-hot draft
    noise = torch.empty_like(row).exponential_(generator=generator)
    noise.clamp_(min=torch.finfo(noise.dtype).tiny)
    return [*draft[:accepted], int(row.div_(noise).argmax())]


def sample_step(
    sampler: Sampler,
    sampled: list[ScheduledRequest],
    logits: Tensor,
    allowed: GrammarBitmask | None,
    allowed_drafts: GrammarBitmask | None = None,
) -> tuple[list[list[int]], list[list[TokenLogprobs | None]]]:
    """New tokens (and their logprobs) for each sampled request of a step, in order: one
    sampled token for a plain row, the accepted drafts and one more for a verifying request.
    ``allowed`` masks the plain rows, ``allowed_drafts`` the verifying ones."""
    if not sampled:
        return [], []
    if not any(s.num_draft_tokens for s in sampled):
        return _sample_plain(sampler, logits, sampled, allowed)
    plain_rows: list[int] = []
    verify_rows: list[int] = []
    row = 0
    for s in sampled:
        (verify_rows if s.num_draft_tokens else plain_rows).extend(range(row, row + s.num_logits))
        row += s.num_logits
    assert row == logits.shape[0]
    plain = [s for s in sampled if not s.num_draft_tokens]
    verifying = [s for s in sampled if s.num_draft_tokens]
    plain_out = iter(
        zip(*_sample_plain(sampler, logits[plain_rows], plain, allowed), strict=True)
        if plain
        else ()
    )
    checked = verify(
        sampler,
        logits[verify_rows],
        [s.request for s in verifying],
        [s.draft_token_ids for s in verifying],
        allowed_drafts,
    )
    verified = iter(zip(checked.token_ids, checked.logprobs, strict=True))
    token_ids: list[list[int]] = []
    logprobs: list[list[TokenLogprobs | None]] = []
    for s in sampled:
        tokens, token_logprobs = next(verified) if s.num_draft_tokens else next(plain_out)
        token_ids.append(tokens)
        logprobs.append(token_logprobs)
    return token_ids, logprobs


def _sample_plain(
    sampler: Sampler,
    logits: Tensor,
    plain: list[ScheduledRequest],
    allowed: GrammarBitmask | None,
) -> tuple[list[list[int]], list[list[TokenLogprobs | None]]]:
    out = sampler.sample(logits, [s.request for s in plain], allowed)
    return [[t] for t in out.token_ids], [[lp] for lp in out.logprobs]
