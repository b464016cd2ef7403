"""Prompt-lookup (n-gram) proposals: guess a request's next tokens from its own earlier tokens.

The last ``n`` tokens are searched for earlier in the sequence, longest ``n`` first; the
tokens that followed the latest earlier occurrence are the guess::

    tokens:  ... the  invoice  number  is  4 7 1 1 ...  so the  invoice  number  |
                      ^^^^^^^^^^^^^^^ match (n = 2)                ^^^^^^^^^^^^^^^ suffix
    guess:   is 4 7 1          (the k tokens after the match)

An extraction answer quotes its document, so the guess is often right for many tokens.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        assert 1 <= min_n <= max_n
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, token_ids: list[int], max_tokens: int) -> list[int]:
        """Up to ``max_tokens`` guessed next tokens (none when no suffix recurs)."""
        num_tokens = len(token_ids)
        if max_tokens <= 0 or num_tokens <= self.min_n:
            return []
        tokens = np.asarray(token_ids, dtype=np.int64)
        for n in range(min(self.max_n, num_tokens - 1), self.min_n - 1, -1):
            suffix = tokens[num_tokens - n :]
            # Windows starting at 0 .. num_tokens - n - 1: each is followed by a token.
            windows = sliding_window_view(tokens[: num_tokens - 1], n)
            hits = np.flatnonzero((windows == suffix).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n
                return token_ids[start : start + max_tokens]
        return []
