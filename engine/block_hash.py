"""Chained content hashes of full KV blocks: the keys of the prefix cache.

A block's K/V depend on every token before it, not only on its own tokens, so its key chains
the previous block's key in::

    tokens:  [ t0 .. t15 | t16 .. t31 | t32 .. t40 ]      block_size = 16
    hashes:     h0           h1          (none: not full)
    h0 = H(None, (t0..t15), extra)
    h1 = H(h0,   (t16..t31), extra)

Two requests share a cached block only if they agree on the whole prefix up to its end.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence

BlockHash = int


def hash_block_tokens(
    parent_hash: BlockHash | None,
    token_ids: Sequence[int],
    extra_keys: tuple[object, ...] = (),
) -> BlockHash:
    """SHA-256 of ``(parent_hash, tokens, extra_keys)`` cut to 64 bits.

    A cryptographic hash rather than Python's ``hash``: a collision would silently hand one
    request another request's K/V, and SHA-256 also keeps keys stable across processes.
    ``extra_keys`` carries anything besides the tokens that changes the K/V (an adapter id,
    a cache salt) so that such requests never share blocks.
    """
    payload = pickle.dumps((parent_hash, tuple(token_ids), extra_keys), protocol=5)
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little")


def extend_block_hashes(
    block_hashes: list[BlockHash],
    token_ids: Sequence[int],
    block_size: int,
    extra_keys: tuple[object, ...] = (),
) -> None:
    """Append the keys of the full blocks of ``token_ids`` that ``block_hashes`` lacks.

    Keys only depend on tokens (and the request's fixed ``extra_keys``: its LoRA adapter's
    id), so they stay valid as a request grows or is preempted; each is computed once.
    """
    num_full_blocks = len(token_ids) // block_size
    for index in range(len(block_hashes), num_full_blocks):
        parent = block_hashes[-1] if block_hashes else None
        start = index * block_size
        block_tokens = token_ids[start : start + block_size]
        block_hashes.append(hash_block_tokens(parent, block_tokens, extra_keys))
