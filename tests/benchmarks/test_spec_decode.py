"""The n-gram replay behind spec_decode's ceilings counts what a speculative run would do."""

from benchmarks.spec_decode import ngram_tokens_per_forward


def test_a_quoted_answer_is_verified_in_one_pass() -> None:
    # The suffix "1 2" recurs at the start: the three tokens after it are the whole answer.
    prompt, answer = [1, 2, 3, 4, 5, 1, 2], [3, 4, 5, 9]
    # One pass keeps the three drafts and adds the target's own token: 4 tokens, 1 pass.
    assert ngram_tokens_per_forward([prompt], [answer], k=4, min_n=2, max_n=2) == 4.0


def test_wrong_or_missing_drafts_give_one_token_a_pass() -> None:
    # First pass: the draft (3) is wrong; second: "2 7" never occurred, so no draft.
    prompt, answer = [1, 2, 3, 4, 5, 1, 2], [7, 8]
    assert ngram_tokens_per_forward([prompt], [answer], k=4, min_n=2, max_n=2) == 1.0


def test_passes_are_counted_over_all_requests() -> None:
    prompt = [1, 2, 3, 4, 5, 1, 2]
    # 4 tokens in 1 pass, then 2 tokens in 2 passes: 6 tokens in 3 passes.
    rate = ngram_tokens_per_forward([prompt, prompt], [[3, 4, 5, 9], [7, 8]], 4, 2, 2)
    assert rate == 2.0
