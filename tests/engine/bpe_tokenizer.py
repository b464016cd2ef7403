"""A small byte-level BPE tokenizer trained in-process, saved as a Hugging Face tokenizer directory.

Its vocabulary is small enough that CJK characters and emoji are split across several byte
tokens, which is what the incremental detokenizer has to get right.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, IM_START = "<|bos|>", "<|im_end|>", "<|im_start|>"
SPECIAL_TOKENS = [BOS, EOS, IM_START]

CORPUS = [
    "héllo wörld 你好 🙂",
    "hello world, the quick brown fox jumps over the lazy dog.",
    "Grüße aus München! Ça va très bien, merci.",
    "你好世界，今天天气很好。",
    "emoji time 🙂🙃🚀 and more text to merge on",
    "the the the hello hello world world wörld",
] * 20

CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_bpe_tokenizer(path: Path, chat_template: str | None = CHATML_TEMPLATE) -> Path:
    """Train the tokenizer and save it (with ``chat_template`` when given) under ``path``."""
    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    rust.train_from_iterator(CORPUS, trainer)
    bos_id = rust.token_to_id(BOS)
    rust.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=rust,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    if chat_template is not None:
        hf.chat_template = chat_template
    hf.save_pretrained(str(path))
    return path
