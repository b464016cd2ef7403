from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from engine.tokenizer import Tokenizer, TokenizerError, has_tokenizer
from tests.engine.bpe_tokenizer import BOS, EOS, IM_START, build_bpe_tokenizer

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "héllo 你好 🙂"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(model_dir)


def test_has_tokenizer(model_dir: Path, tmp_path: Path) -> None:
    assert has_tokenizer(model_dir)
    (tmp_path / "config.json").write_text("{}")
    assert not has_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        Tokenizer.from_pretrained(tmp_path)


def test_special_ids_and_sizes(tokenizer: Tokenizer) -> None:
    bos, eos, im_start = (
        tokenizer.encode(t, add_special_tokens=False)[0] for t in (BOS, EOS, IM_START)
    )
    assert tokenizer.eos_token_id == eos
    assert set(tokenizer.all_special_ids) == {bos, eos, im_start}
    assert tokenizer.vocab_size == len(tokenizer.hf_tokenizer) == 300


def test_encode_decode_round_trip(tokenizer: Tokenizer) -> None:
    text = "Grüße 你好世界 🚀 the end."
    with_bos = tokenizer.encode(text)
    plain = tokenizer.encode(text, add_special_tokens=False)
    assert with_bos == tokenizer.encode(BOS, add_special_tokens=False) + plain
    assert tokenizer.decode(with_bos) == text
    assert tokenizer.decode(with_bos, skip_special_tokens=False) == BOS + text


def test_decode_does_not_clean_up_spaces(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("hello , world .", add_special_tokens=False)
    assert tokenizer.decode(ids) == "hello , world ."


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template(tokenizer: Tokenizer, generation_prompt: bool) -> None:
    expected = f"{BOS}{IM_START}system\nBe brief.{EOS}\n{IM_START}user\nhéllo 你好 🙂{EOS}\n" + (
        f"{IM_START}assistant\n" if generation_prompt else ""
    )
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=generation_prompt)
    assert ids == tokenizer.encode(expected, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=False) == expected
    assert ids.count(tokenizer.encode(BOS, add_special_tokens=False)[0]) == 1


def test_chat_template_rejection_is_a_clear_error(tokenizer: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match="unknown role tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}])


def test_missing_chat_template(tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_pretrained(build_bpe_tokenizer(tmp_path, chat_template=None))
    assert not tokenizer.has_chat_template
    with pytest.raises(TokenizerError, match="no chat template"):
        tokenizer.apply_chat_template(MESSAGES)


# (the config's model_type, tokenizer_config.json's tokenizer_class): the declared class alone,
# one the model family registers differently (Llama's, over a ByteLevel tokenizer.json: the
# case AutoTokenizer overrides), another family's class, and no declared class at all.
DECLARATIONS = [
    ("llama", "TokenizersBackend"),
    ("llama", "LlamaTokenizer"),
    ("qwen2", "Qwen2Tokenizer"),
    ("qwen3", "PreTrainedTokenizerFast"),
    ("gpt2", "GPT2Tokenizer"),
    ("qwen2", None),
]


@pytest.mark.parametrize(("model_type", "declared"), DECLARATIONS)
def test_tokenizer_is_the_one_auto_tokenizer_picks(
    model_type: str, declared: str | None, smollm2_dir: Path, tmp_path: Path
) -> None:
    """The plain config given to AutoTokenizer (engine/tokenizer.py) changes neither the class
    it picks nor the ids: SmolLM2's tokenizer files under several declarations."""
    for name in ("tokenizer.json", "chat_template.jinja"):
        shutil.copy(smollm2_dir / name, tmp_path / name)
    settings = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    settings.pop("tokenizer_class", None)
    if declared is not None:
        settings["tokenizer_class"] = declared
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    config = json.loads((smollm2_dir / "config.json").read_text()) | {"model_type": model_type}
    (tmp_path / "config.json").write_text(json.dumps(config))

    ours = Tokenizer.from_pretrained(tmp_path)
    auto = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert type(ours.hf_tokenizer) is type(auto)
    text = " Grüße, 你好 🚀 the end.\n  x"
    for special in (True, False):
        assert ours.encode(text, special) == auto.encode(text, add_special_tokens=special)
    rendered = auto.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert ours.apply_chat_template(MESSAGES) == auto.encode(rendered, add_special_tokens=False)
    assert ours.all_special_ids == list(auto.all_special_ids)
