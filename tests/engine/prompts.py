"""Deterministic prompt sets for the engine's parity tests."""

from __future__ import annotations

import torch


def prompt_lengths(num_prompts: int, max_len: int, seed: int = 0) -> list[int]:
    """Mixed lengths from 1 to ``max_len``: both ends always present, the rest random."""
    gen = torch.Generator().manual_seed(seed)
    middle = torch.randint(2, max_len, (max(0, num_prompts - 2),), generator=gen).tolist()
    return [1, max_len, *middle][-num_prompts:]


def random_token_prompts(num_prompts: int, max_len: int, vocab_size: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [
        torch.randint(3, vocab_size, (n,), generator=gen).tolist()
        for n in prompt_lengths(num_prompts, max_len)
    ]


def text_token_prompts(token_ids: list[int], num_prompts: int, max_len: int) -> list[list[int]]:
    """Windows of a tokenized corpus, at varying offsets, of mixed lengths."""
    prompts = []
    for i, n in enumerate(prompt_lengths(num_prompts, max_len)):
        start = (i * 37) % max(1, len(token_ids) - n)
        prompts.append(token_ids[start : start + n])
    return prompts


def max_tokens_for(num_prompts: int, low: int, high: int) -> list[int]:
    gen = torch.Generator().manual_seed(2)
    return torch.randint(low, high + 1, (num_prompts,), generator=gen).tolist()
