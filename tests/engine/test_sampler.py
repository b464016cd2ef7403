from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from engine.logits_processors import PenaltyState, apply_penalties
from engine.request import Request, RequestId
from engine.sampler import Sampler, greedy
from engine.sampling_params import SamplingParams

VOCAB = 64
EOS = 2


def make_request(
    rid: str,
    params: SamplingParams,
    prompt: list[int] | None = None,
    output: list[int] | None = None,
) -> Request:
    request = Request(RequestId(rid), prompt or [5, 6, 7], params, eos_token_id=EOS)
    request.token_ids.extend(output or [])
    return request


def random_logits(rows: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def frequencies(token_ids: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(token_ids), minlength=vocab).double() / len(token_ids)


def sample_many(probs: list[float], params: SamplingParams, num: int = 20000) -> torch.Tensor:
    """Empirical distribution of ``num`` unseeded draws from one row of ``log(probs)``."""
    logits = torch.tensor(probs).log().expand(num, len(probs)).contiguous()
    requests = [make_request(f"r{i}", params) for i in range(num)]
    out = Sampler(len(probs), seed=1234).sample(logits, requests)
    return frequencies(out.token_ids, len(probs))


def assert_close_distribution(
    observed: torch.Tensor, expected: list[float], num: int = 20000
) -> None:
    """Pearson chi-square over the support; 30 is far in the tail for <= 5 degrees of freedom."""
    expected_t = torch.tensor(expected, dtype=torch.float64)
    assert torch.all(observed[expected_t == 0] == 0), observed
    support = expected_t > 0
    chi2 = (num * (observed[support] - expected_t[support]) ** 2 / expected_t[support]).sum()
    assert chi2 < 30, (chi2, observed, expected)


def generate(sampler: Sampler, request: Request, logits_per_step: list[torch.Tensor]) -> list[int]:
    """Sample ``request`` alone, one step per logits row, appending its tokens."""
    for row in logits_per_step:
        request.append_token(sampler.sample(row.unsqueeze(0), [request]).token_ids[0])
    return request.output_token_ids


def test_greedy_is_argmax_and_logits_are_untouched() -> None:
    logits = random_logits(5)
    before = logits.clone()
    requests = [make_request(f"r{i}", SamplingParams(temperature=0.0)) for i in range(5)]
    out = Sampler(VOCAB).sample(logits, requests)
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs == [None] * 5
    assert torch.equal(logits, before)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(seed=1234),
        SamplingParams(seed=1234, temperature=0.8, top_k=10),
        SamplingParams(seed=1234, top_p=0.9),
        SamplingParams(seed=1234, min_p=0.05, repetition_penalty=1.3),
    ],
)
def test_seeded_sampling_ignores_batch_composition(params: SamplingParams) -> None:
    steps = [random_logits(1, seed=s)[0] for s in range(12)]
    alone = generate(Sampler(VOCAB, seed=0), make_request("a", params), steps)

    sampler = Sampler(VOCAB, seed=99)
    target = make_request("a", params)
    others = [
        make_request("b", SamplingParams(temperature=0.7, seed=7)),
        make_request("c", SamplingParams(temperature=1.0)),
        make_request("d", SamplingParams(temperature=0.0)),
    ]
    for step, row in enumerate(steps):
        position = step % 4  # the target moves around the batch and the batch changes size
        batch = others[: step % 3 + 1]
        batch.insert(min(position, len(batch)), target)
        logits = random_logits(len(batch), seed=100 + step)
        logits[batch.index(target)] = row
        out = sampler.sample(logits, batch)
        for request, token_id in zip(batch, out.token_ids, strict=True):
            request.append_token(token_id)
    assert target.output_token_ids == alone


def test_different_seeds_differ_and_release_restarts_the_stream() -> None:
    steps = [torch.zeros(VOCAB) for _ in range(20)]  # uniform: any two streams should differ
    sampler = Sampler(VOCAB)
    first = generate(sampler, make_request("x", SamplingParams(seed=1)), steps)
    other = generate(sampler, make_request("y", SamplingParams(seed=2)), steps)
    assert first != other
    sampler.release("x")
    assert generate(sampler, make_request("x", SamplingParams(seed=1)), steps) == first


@pytest.mark.parametrize("params", [SamplingParams(top_k=1), SamplingParams(top_p=1e-6)])
def test_top_k_one_and_tiny_top_p_are_greedy(params: SamplingParams) -> None:
    logits = random_logits(32, seed=3)
    requests = [make_request(f"r{i}", params) for i in range(32)]
    assert Sampler(VOCAB).sample(logits, requests).token_ids == logits.argmax(-1).tolist()


PROBS = [0.05, 0.4, 0.1, 0.3, 0.15]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (SamplingParams(temperature=1.0), PROBS),
        # temperature 2: p ** (1/2), renormalised
        (SamplingParams(temperature=2.0), [p**0.5 / sum(q**0.5 for q in PROBS) for p in PROBS]),
        (SamplingParams(temperature=0.5), [p**2 / sum(q**2 for q in PROBS) for p in PROBS]),
        (SamplingParams(top_k=2), [0, 4 / 7, 0, 3 / 7, 0]),
        # nucleus 0.75: 0.4 + 0.3 < 0.75 so 0.15 is still needed; 0.1 and 0.05 are not
        (SamplingParams(top_p=0.75), [0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85]),
        # min_p 0.3: keep p >= 0.3 * 0.4 = 0.12
        (SamplingParams(min_p=0.3), [0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85]),
        (SamplingParams(top_k=3, top_p=0.5), [0, 4 / 7, 0, 3 / 7, 0]),
    ],
)
def test_sampled_distribution(params: SamplingParams, expected: list[float]) -> None:
    assert_close_distribution(sample_many(PROBS, params), expected)


def test_apply_penalties_matches_hand_computation() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0, 4.0]])
    state = PenaltyState.create([0, 3], vocab_size=6, device=torch.device("cpu"))
    state.catch_up([2])
    state.catch_up([2, 2, 4])  # incremental: counts only the two new tokens
    assert state.output_counts.tolist() == [0, 0, 2, 0, 1, 0]
    out = apply_penalties(logits, [state], repetition=[2.0], presence=[0.5], frequency=[0.25])
    # seen (prompt or output): 0, 2, 3, 4 -> positive / 2, negative * 2
    # then token 2: -0.5 presence - 2 * 0.25 frequency; token 4: -0.5 - 0.25
    expected = [1.0, -1.0, 0.25 - 1.0, -6.0, 0.5 - 0.75, 4.0]
    torch.testing.assert_close(out, torch.tensor([expected]))


def test_penalties_through_the_sampler_change_greedy_choice() -> None:
    logits = torch.full((3, VOCAB), -5.0)
    logits[:, 10] = 3.0
    logits[:, 11] = 2.0
    requests = [
        make_request("rep", SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=[10]),
        make_request(
            "freq", SamplingParams(temperature=0.0, frequency_penalty=0.6), output=[10, 10]
        ),
        make_request("none", SamplingParams(temperature=0.0), prompt=[10], output=[10, 10]),
    ]
    assert Sampler(VOCAB).sample(logits, requests).token_ids == [11, 11, 10]


def test_logit_bias_forces_and_bans_tokens() -> None:
    logits = random_logits(3, seed=5)
    top = logits.argmax(-1).tolist()
    requests = [
        make_request("force", SamplingParams(temperature=1.0, seed=3, logit_bias={17: 100.0})),
        make_request("force-greedy", SamplingParams(temperature=0.0, logit_bias={17: 100.0})),
        make_request("ban", SamplingParams(temperature=0.0, logit_bias={top[2]: -100.0})),
    ]
    out = Sampler(VOCAB).sample(logits, requests)
    second = logits[2].topk(2).indices[1].item()
    assert out.token_ids == [17, 17, second]


def test_min_tokens_masks_eos_and_stop_ids() -> None:
    logits = torch.zeros(4, VOCAB)
    logits[:, EOS] = 10.0
    logits[:, 9] = 9.0
    logits[:, 8] = 8.0
    greedy = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[9])
    requests = [
        make_request("early", greedy, output=[30]),
        make_request("done", greedy, output=[30, 31]),
        make_request("ignore", replace(greedy, ignore_eos=True)),
        make_request("sampled", SamplingParams(temperature=5.0, min_tokens=1)),
    ]
    out = Sampler(VOCAB).sample(logits, requests)
    assert out.token_ids[:3] == [8, EOS, EOS]
    assert out.token_ids[3] != EOS


@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_logprobs_are_raw_log_softmax(k: int) -> None:
    logits = random_logits(3, seed=11)
    params = SamplingParams(
        temperature=0.7, top_k=5, repetition_penalty=1.5, logit_bias={3: 5.0}, logprobs=k, seed=2
    )
    requests = [
        make_request("a", params, output=[3, 4]),
        make_request("b", SamplingParams(temperature=0.0)),
        make_request("c", SamplingParams(temperature=0.0, logprobs=k)),
    ]
    out = Sampler(VOCAB).sample(logits, requests)
    reference = torch.log_softmax(logits.double(), dim=-1)
    assert out.logprobs[1] is None
    for row in (0, 2):
        entry = out.logprobs[row]
        assert entry is not None
        assert entry.token_id == out.token_ids[row]
        assert math.isclose(entry.logprob, reference[row, entry.token_id].item(), abs_tol=1e-5)
        assert len(entry.top) == k
        assert [t for t, _ in entry.top] == reference[row].topk(k).indices.tolist()
        values = [v for _, v in entry.top]
        assert values == sorted(values, reverse=True)
        torch.testing.assert_close(
            torch.tensor(values, dtype=torch.float64),
            reference[row].topk(k).values,
            atol=1e-5,
            rtol=0,
        )
    assert out.logprobs[2] is not None and out.logprobs[2].token_id == logits[2].argmax().item()


def test_large_vocab_without_top_p_never_sorts(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sort(*args: object, **kwargs: object) -> None:
        raise AssertionError("the vocabulary was sorted")

    monkeypatch.setattr(torch.Tensor, "sort", no_sort)
    vocab = 50_000
    logits = random_logits(4, seed=1, vocab=vocab)
    requests = [
        make_request("a", SamplingParams(temperature=0.8, top_k=40, seed=1)),
        make_request("b", SamplingParams(temperature=1.0, min_p=0.1)),
        make_request("c", SamplingParams(temperature=0.0, logprobs=5)),
        make_request("d", SamplingParams(temperature=1.0, presence_penalty=1.0), output=[1, 2]),
    ]
    out = Sampler(vocab).sample(logits, requests)
    assert out.token_ids[0] in logits[0].topk(40).indices.tolist()
    assert out.token_ids[2] == logits[2].argmax().item()


def test_fused_kernel_path_draws_the_same_distribution() -> None:
    """With the Triton kernels on (CUDA, or here the interpreter), temperature-only rows are
    drawn by the fused Gumbel-max kernel; mixed with a greedy row, and next to a top-k batch
    that must keep the PyTorch path."""
    import kernels

    previous = kernels.get_backend()
    kernels.set_backend("triton")
    try:
        num = 300  # the interpreter runs ~8 ms per row
        logits = torch.tensor(PROBS).log().expand(num, len(PROBS)).contiguous()
        params = SamplingParams(temperature=0.5)
        requests = [make_request(f"r{i}", params) for i in range(num - 1)]
        requests.append(make_request("greedy", SamplingParams(temperature=0.0)))
        out = Sampler(len(PROBS), seed=3).sample(logits, requests)
        assert out.token_ids[-1] == 1  # the greedy row: argmax
        observed = frequencies(out.token_ids[:-1], len(PROBS))
        expected = torch.tensor([p**2 for p in PROBS], dtype=torch.float64)
        expected /= expected.sum()
        assert (observed - expected).abs().max() < 4.5 * (0.25 / num) ** 0.5
        top_k = Sampler(len(PROBS), seed=3).sample(
            logits[:50], [make_request(f"k{i}", SamplingParams(top_k=1)) for i in range(50)]
        )
        assert set(top_k.token_ids) == {1}
    finally:
        kernels.set_backend(previous)


def test_greedy_is_argmax_with_its_ties_and_nans() -> None:
    """``greedy`` takes ``max``'s indices for speed; they must be ``argmax``'s: the first of
    equal maxima, and a NaN wherever a row has one."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (64, 1000), generator=gen).float()  # many ties
    logits[5, 17] = float("nan")
    logits[9, 999] = float("inf")
    assert torch.equal(greedy(logits), logits.argmax(dim=-1))
    assert greedy(logits)[5] == 17 and greedy(logits)[9] == 999
