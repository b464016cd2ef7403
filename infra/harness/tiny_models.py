"""Tiny random-weight Llama, Qwen2 and Qwen3 models saved as Hugging Face safetensors directories.

They exercise the same loading and forward code as real checkpoints (GQA, tied embeddings,
qkv bias, q/k norm, explicit head_dim, llama3 rope scaling) in a fraction of a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

COMMON: dict[str, Any] = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    initializer_range=0.08,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def tiny_config(kind: str) -> PretrainedConfig:
    # The rope keys go in as plain keywords: every transformers release accepts the classic
    # `rope_theta` / `rope_scaling` form (5.x converts it to `rope_parameters` when saving).
    if kind == "llama":
        llama3_rope: dict[str, Any] = dict(
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256,
            },
        )
        return LlamaConfig(**COMMON, **llama3_rope, tie_word_embeddings=False)
    qwen_rope: dict[str, Any] = dict(rope_theta=1000000.0)
    if kind == "qwen2":
        return Qwen2Config(**COMMON, **qwen_rope, tie_word_embeddings=True)
    if kind == "qwen3":
        return Qwen3Config(**COMMON, **qwen_rope, head_dim=32, tie_word_embeddings=True)
    raise ValueError(kind)


def build_tiny_model(kind: str, path: Path, seed: int = 0) -> Path:
    """Write a random-weight model of ``kind`` to ``path`` (fp32 safetensors) and return it."""
    if (path / "config.json").exists():
        return path
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind), dtype=torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    return path


def model_variant(src: Path, dst: Path, **config_changes: Any) -> Path:
    """A copy of the model directory ``src`` with ``config_changes`` made to its
    ``config.json``: a model the engine must treat differently, or refuse."""
    shutil.copytree(src, dst)
    config_path = dst / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, **config_changes}))
    return dst


CHAT_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def build_tiny_chat_model(path: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A tiny random-weight Llama that speaks a real model's tokenizer and chat template.

    Chat batches run through the whole service in seconds with it; the vocabulary, special
    tokens and template are ``tokenizer_dir``'s, so every line renders and tokenizes exactly
    as it would for the real model.
    """
    if (path / "config.json").exists():
        return path
    source = json.loads((tokenizer_dir / "config.json").read_text())
    config = LlamaConfig(
        **{
            **COMMON,
            "vocab_size": source["vocab_size"],
            "bos_token_id": source["bos_token_id"],
            "eos_token_id": source["eos_token_id"],
            "pad_token_id": source.get("pad_token_id"),
            "max_position_embeddings": 2048,
        },
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    for name in CHAT_FILES:
        shutil.copyfile(tokenizer_dir / name, path / name)
    return path
