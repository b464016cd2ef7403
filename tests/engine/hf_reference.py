"""Hugging Face transformers as the correctness reference for the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

# transformers' annotations do not type-check `generate` and `__call__`; the reference model
# is passed around as an opaque object.
PreTrainedModel = Any


def load_hf_model(model_dir: Path) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model


@torch.inference_mode()
def hf_greedy(model: PreTrainedModel, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy ``generate`` for one prompt alone (no padding), new tokens only."""
    input_ids = torch.tensor([prompt])
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=model.config.pad_token_id or 0,
    )
    return out[0, len(prompt) :].tolist()


@torch.inference_mode()
def hf_log_softmax(model: PreTrainedModel, token_ids: list[int]) -> torch.Tensor:
    """Log-probabilities ``[len(token_ids), vocab]`` of the next token after each position."""
    logits = model(torch.tensor([token_ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)
