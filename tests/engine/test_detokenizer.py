from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.detokenizer import IncrementalDetokenizer
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from tests.engine.bpe_tokenizer import EOS, IM_START, build_bpe_tokenizer

MULTIBYTE = "héllo wörld 你好 🙂 Grüße aus München! 你好世界 🚀🙃"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_pretrained(build_bpe_tokenizer(tmp_path_factory.mktemp("bpe")))


def feed(
    detok: IncrementalDetokenizer, ids: list[int], chunk_sizes: list[int] | None = None
) -> list[str]:
    """Feed ``ids`` in chunks (one token each by default); returns ``text`` after every update."""
    texts: list[str] = []
    sizes = iter(chunk_sizes or [])
    start = 0
    while start < len(ids):
        size = max(next(sizes, 1), 1)
        detok.update(ids[start : start + size])
        texts.append(detok.text)
        start += size
    return texts


def test_fixture_splits_multibyte_characters(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(MULTIBYTE, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)


def test_token_by_token_matches_full_decode(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(MULTIBYTE, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams())
    texts = feed(detok, ids)
    assert detok.text == tokenizer.decode(ids) == MULTIBYTE
    for text in texts:
        assert "\ufffd" not in text
        assert MULTIBYTE.startswith(text)


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab hélo wörd你好世界🙂🙃🚀,.\n")), max_size=40),
    prompt=st.text(alphabet=st.sampled_from(list("xy 你🙂")), max_size=8),
    chunk_sizes=st.lists(st.integers(min_value=1, max_value=4), max_size=40),
)
def test_any_split_matches_full_decode(
    tokenizer: Tokenizer, text: str, prompt: str, chunk_sizes: list[int]
) -> None:
    prompt_ids = tokenizer.encode(prompt)
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, SamplingParams())
    texts = feed(detok, ids, chunk_sizes)
    assert detok.text == tokenizer.decode(ids) == text
    assert all("\ufffd" not in t and text.startswith(t) for t in texts)


def test_flush_emits_an_unfinished_character(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 你好世界", add_special_tokens=False)
    truncated = ids[:-1]
    assert tokenizer.decode(truncated).endswith("\ufffd")
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams())
    feed(detok, truncated)
    assert "\ufffd" not in detok.text
    assert detok.flush() is None
    assert detok.text == tokenizer.decode(truncated)


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_tokens(tokenizer: Tokenizer, include: bool) -> None:
    ids = tokenizer.encode(MULTIBYTE, add_special_tokens=False)
    stop = "你好世"
    assert all(stop not in tokenizer.decode([i]) for i in ids), "stop must span several tokens"
    params = SamplingParams(stop=["never", stop], include_stop_str_in_output=include)
    detok = IncrementalDetokenizer(tokenizer, [], params)
    fed = 0
    while detok.stop_str is None and fed < len(ids):
        matched = detok.update([ids[fed]])
        fed += 1
    assert matched == stop
    assert fed < len(ids), "the match must come as soon as the stop string is complete"
    end = MULTIBYTE.index(stop) + (len(stop) if include else 0)
    assert detok.text == MULTIBYTE[:end]
    assert detok.stop_str == stop


def test_earliest_stop_string_wins_within_one_update(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("hello world, the quick brown fox", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["quick", "world"]))
    assert detok.update(ids) == "world"
    assert detok.text == "hello "


def test_no_stop_string_keeps_everything(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(MULTIBYTE, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["xyz", "🙂🙂"]))
    assert all(detok.update([i]) is None for i in ids)
    assert detok.text == MULTIBYTE


@pytest.mark.parametrize("skip", [True, False])
def test_skip_special_tokens(tokenizer: Tokenizer, skip: bool) -> None:
    im_start, eos = tokenizer.encode(IM_START + EOS, add_special_tokens=False)
    ids = [
        im_start,
        *tokenizer.encode("你好 ", add_special_tokens=False),
        eos,
        *tokenizer.encode("wörld", add_special_tokens=False),
    ]
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(skip_special_tokens=skip))
    feed(detok, ids)
    expected = "你好 wörld" if skip else f"{IM_START}你好 {EOS}wörld"
    assert detok.text == expected == tokenizer.decode(ids, skip_special_tokens=skip)


def test_real_tokenizer_matches_full_decode(smollm2_dir: Path) -> None:
    tokenizer = Tokenizer.from_pretrained(smollm2_dir)
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": "Say hi"}])
    text = "Sure! " + MULTIBYTE + " — ½ café naïve ✓ 日本語のテキスト"
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, SamplingParams())
    texts = feed(detok, ids)
    assert detok.text == tokenizer.decode(ids) == text
    assert all("\ufffd" not in t for t in texts)
