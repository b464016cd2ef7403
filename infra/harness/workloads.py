"""Workloads the benchmarks run and the tests check at a toy size: nano-vllm's W1 token
prompts and a fixed English corpus for real-text prompts."""

from __future__ import annotations

import argparse
import json
import random
import textwrap
from dataclasses import dataclass

# A fixed English corpus from the standard library, so real-model prompts are real text.
CORPUS = " ".join(doc or "" for doc in (json.__doc__, argparse.__doc__, textwrap.__doc__))


@dataclass(frozen=True, slots=True)
class Workload:
    prompts: list[list[int]]
    max_tokens: list[int]
    temperature: float = 0.6

    @property
    def num_output_tokens(self) -> int:
        return sum(self.max_tokens)

    def head(self, count: int) -> Workload:
        return Workload(self.prompts[:count], self.max_tokens[:count], self.temperature)


def make_w1(
    num_seqs: int = 256, min_len: int = 100, max_len: int = 1024, max_token_id: int = 10000
) -> Workload:
    """nano-vllm's ``bench.py`` draws, in this order, from ``random.seed(0)``."""
    rng = random.Random(0)
    prompts = [
        [rng.randint(0, max_token_id) for _ in range(rng.randint(min_len, max_len))]
        for _ in range(num_seqs)
    ]
    max_tokens = [rng.randint(min_len, max_len) for _ in range(num_seqs)]
    return Workload(prompts, max_tokens)
