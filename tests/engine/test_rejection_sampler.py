"""Rejection sampling of drafts keeps the target distribution exactly, and greedy acceptance
is the longest agreeing prefix plus the target's own token."""

from __future__ import annotations

import torch

from engine.logits_processors import apply_top_k_top_p
from engine.rejection_sampler import verify
from engine.request import Request, RequestId
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams

# Chi-square critical values at significance 0.001, by degrees of freedom.
CHI2_CRITICAL_0_001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}

ROWS = torch.tensor(
    [
        [2.0, 1.5, 1.0, 0.5, 0.0, -1.0],  # the token after the prompt
        [0.0, 1.0, 2.0, 0.5, -0.5, 1.5],  # after draft 1
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # after drafts 1 and 2
    ]
)
DRAFTS = [1, 2]


def request(i: int, params: SamplingParams) -> Request:
    return Request(RequestId(f"r{i}"), [0], params)


def target(row: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution plain sampling draws from: temperature, then top-p."""
    scaled = row.unsqueeze(0) / params.temperature
    return apply_top_k_top_p(scaled, [params.top_k], [params.top_p]).softmax(-1)[0]


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over the tokens the target may draw, and its degrees of freedom;
    a token the target never draws must never be drawn."""
    support = probs > 0
    assert counts[~support].sum() == 0, "a token outside the target's support was drawn"
    expected = probs[support] * counts.sum()
    statistic = float(((counts[support] - expected) ** 2 / expected).sum())
    return statistic, int(support.sum()) - 1


def test_first_two_tokens_follow_the_target_distribution_at_temperature_with_top_p() -> None:
    """3000 seeded requests verify the same two drafts: token 1 must follow row 0's
    distribution, and token 2, where token 1 was the draft, row 1's (chi-square, 0.001)."""
    params = [SamplingParams(temperature=0.7, top_p=0.8, seed=i) for i in range(3000)]
    requests = [request(i, p) for i, p in enumerate(params)]
    logits = ROWS.repeat(len(requests), 1)
    out = verify(Sampler(vocab_size=6), logits, requests, [DRAFTS] * len(requests))
    first = torch.bincount(torch.tensor([t[0] for t in out.token_ids]), minlength=6)
    seconds = [t[1] for t in out.token_ids if t[0] == DRAFTS[0]]
    second = torch.bincount(torch.tensor(seconds), minlength=6)
    assert all(len(t) == 1 for t in out.token_ids if t[0] != DRAFTS[0])
    for counts, row in ((first, ROWS[0]), (second, ROWS[1])):
        statistic, dof = chi_square(counts.float(), target(row, params[0]))
        assert statistic < CHI2_CRITICAL_0_001[dof], (counts.tolist(), statistic)
    # Both the accepted and the rejected paths ran.
    assert 0 < first[DRAFTS[0]] < len(requests) and 0 < second[DRAFTS[1]] < len(seconds)


def test_seeded_verification_is_reproducible() -> None:
    def run() -> list[list[int]]:
        requests = [request(i, SamplingParams(temperature=1.0, seed=i)) for i in range(50)]
        logits = ROWS.repeat(len(requests), 1)
        return verify(Sampler(vocab_size=6), logits, requests, [DRAFTS] * 50).token_ids

    assert run() == run()


def test_greedy_keeps_the_agreeing_prefix_then_the_targets_token() -> None:
    greedy = SamplingParams(temperature=0.0, logprobs=1)
    requests = [request(i, greedy) for i in range(3)]
    logits = ROWS.repeat(3, 1)
    drafts = [[0, 2], [0, 1], [3, 2]]  # row argmaxes are 0, 2, 0
    out = verify(Sampler(vocab_size=6), logits, requests, drafts)
    assert out.token_ids == [[0, 2, 0], [0, 2], [0]]
    assert [len(lp) for lp in out.logprobs] == [3, 2, 1]
    assert [lp.token_id if lp else None for lp in out.logprobs[0]] == [0, 2, 0]
