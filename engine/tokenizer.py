"""Text <-> token ids and chat templates, through transformers' tokenizer (local files only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

# A model directory holds a tokenizer when it has one of these (fast, sentencepiece, BPE vocab).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class TokenizerError(ValueError):
    """The model has no tokenizer or chat template, or a chat cannot be rendered."""


def has_tokenizer(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` ships tokenizer files; without them the engine takes token ids only."""
    return any((Path(model_dir) / name).is_file() for name in _TOKENIZER_FILES)


def _load_hf_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained``, given the model's config as a plain ``PretrainedConfig``
    when ``tokenizer_config.json`` names its class and brings no remote code.

    Left to itself, AutoTokenizer loads the config through its model family's class, and that
    imports the family's modelling stack (~900 modules, 1.5-2 s: the larger part of a worker's
    start after torch itself). With a declared class and no ``auto_map`` its choice reads only
    the config's ``model_type``, ``tokenizer_class`` and name, which the plain config carries
    as well; ``test_tokenizer`` checks that both ways give the same class and ids. Any other
    tokenizer goes through AutoTokenizer whole.
    """
    declared = _tokenizer_config(model_dir)
    config_file = model_dir / "config.json"
    if declared.get("tokenizer_class") and "auto_map" not in declared and config_file.is_file():
        config = PretrainedConfig.from_dict(json.loads(config_file.read_text()))
        config.name_or_path = str(model_dir)
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, config=config)
    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return {}
    loaded = json.loads(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


class Tokenizer:
    """A thin, typed face over a Hugging Face tokenizer.

    Decoding never cleans up tokenization spaces (`` .`` -> ``.``): that clean-up is not
    compositional, and the incremental detokenizer relies on decoding in pieces giving the same
    text as decoding at once.
    """

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase) -> None:
        self.hf_tokenizer = hf_tokenizer

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> Tokenizer:
        if not has_tokenizer(model_dir):
            raise TokenizerError(
                f"no tokenizer files in {model_dir} (looked for {_TOKENIZER_FILES})"
            )
        return cls(_load_hf_tokenizer(Path(model_dir)))

    @property
    def eos_token_id(self) -> int | None:
        return self.hf_tokenizer.eos_token_id

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus added tokens (Hugging Face's ``vocab_size`` omits the latter)."""
        return len(self.hf_tokenizer)

    @property
    def all_special_ids(self) -> list[int]:
        return list(self.hf_tokenizer.all_special_ids)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.hf_tokenizer.chat_template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf_tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        text = self.hf_tokenizer.decode(
            token_ids,
            skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )
        assert isinstance(text, str)
        return text

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Render ``messages`` with the model's template and tokenize the result.

        The rendered text already carries the template's special tokens (BOS included), so it is
        encoded without adding them again.
        """
        if not self.has_chat_template:
            raise TokenizerError("this model has no chat template; send a plain prompt instead")
        try:
            text = self.hf_tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except TemplateError as exc:
            raise TokenizerError(f"the chat template rejected these messages: {exc}") from exc
        assert isinstance(text, str)
        return self.encode(text, add_special_tokens=False)
