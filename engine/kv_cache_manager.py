"""Per-request block tables over the block pool: prefix hits, slot allocation, fork, free.

A request's block table maps its token positions to KV slots::

    position p  ->  block_table[p // block_size], offset p % block_size

    tokens:      [ 0 ..... 15 | 16 ..... 31 | 32 .. 40 _ _ _ _ _ _ _ ]
    block_table: [    b3      |     b8      |      b1               ]
                   full,cached  full,cached   partial: private, never cached

Only full, computed blocks are cached or shared; a partial tail block is always private, so
no block is ever written while another request reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.block_hash import extend_block_hashes
from engine.block_pool import BlockPool, KVBlock
from engine.request import Request, RequestId


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    """Owns the block pool and every request's block table."""

    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True
    ) -> None:
        assert block_size > 0
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self.block_tables: dict[RequestId, list[KVBlock]] = {}
        # The same tables as block ids, kept in step so a decode need not rebuild them.
        self._block_ids: dict[RequestId, list[int]] = {}
        # How many leading blocks of each table are already in the prefix cache (or shared).
        self._num_cached_blocks: dict[RequestId, int] = {}
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_used_blocks

    def get_computed_blocks(self, request: Request) -> list[KVBlock]:
        """The longest run of cached full blocks that prefixes ``request.token_ids``.

        The hit never covers the last token: the request must compute at least that one to
        get logits, so at most ``(num_tokens - 1) // block_size`` blocks::

            num_tokens = 32, block_size = 16:  tokens 0..31, cap = 31 // 16 = 1 block
            -> block 1 (tokens 16..31) is recomputed even if cached.

        Every call counts in the query/hit statistics (a request that waits for free blocks
        and is looked up again counts again).
        """
        if not self.enable_prefix_caching:
            return []
        extend_block_hashes(
            request.block_hashes, request.token_ids, self.block_size, request.block_hash_keys
        )
        max_hit_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in request.block_hashes[:max_hit_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        self.prefix_cache_queries += request.num_tokens
        self.prefix_cache_hits += len(hits) * self.block_size
        return hits

    def get_forked_blocks(self, child: Request) -> list[KVBlock]:
        """The parent's full prompt blocks that an ``n > 1`` sibling shares instead of
        computing them again (capped like a prefix hit, so the child computes its last
        prompt token itself and gets its own logits).

        The parent must have computed its whole prompt and still hold its table.
        """
        parent = child.parent
        assert parent is not None and parent.prompt_token_ids == child.prompt_token_ids
        assert parent.num_computed_tokens >= parent.num_prompt_tokens
        num_shared = (child.num_prompt_tokens - 1) // self.block_size
        table = self.block_tables[parent.request_id]
        assert len(table) >= num_shared
        return table[:num_shared]

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: Sequence[KVBlock] = (),
    ) -> list[int] | None:
        """Grow the table to cover ``num_new_tokens`` more tokens; return its block ids, or
        None (changing nothing) when the pool lacks free blocks. The list returned is the
        request's own and grows with later allocations: read it within the step.

        ``new_computed_blocks`` (prefix hits or forked blocks, admission only) are prepended
        and referenced; the request's ``num_computed_tokens`` is the caller's to advance::

            |<- num_computed ->|<- new computed blocks ->|<- num_new_tokens ->|
            |  table so far    |  touched, ref_cnt += 1  |  fresh blocks      |
        """
        assert num_new_tokens > 0
        request_id = request.request_id
        table = self.block_tables.get(request_id)
        if table is not None and not new_computed_blocks:  # a running request: often a decode
            num_tokens = request.num_computed_tokens + num_new_tokens
            if cdiv(num_tokens, self.block_size) <= len(table):
                return self._block_ids[request_id]
        if new_computed_blocks:
            assert table is None and request.num_computed_tokens == 0, "hits only on admission"
        num_tokens = (
            request.num_computed_tokens
            + len(new_computed_blocks) * self.block_size
            + num_new_tokens
        )
        num_held = (len(table) if table else 0) + len(new_computed_blocks)
        num_needed = max(0, cdiv(num_tokens, self.block_size) - num_held)
        # Touching a cached block that sits on the free list takes it off that list.
        num_revived = sum(1 for block in new_computed_blocks if block.ref_cnt == 0)
        if num_needed > self.pool.num_free_blocks - num_revived:
            return None
        if table is None:
            table = self.block_tables[request_id] = []
            self._block_ids[request_id] = []
            self._num_cached_blocks[request_id] = len(new_computed_blocks)
        self.pool.touch(new_computed_blocks)
        fresh = self.pool.allocate(num_needed)
        table.extend(new_computed_blocks)
        table.extend(fresh)
        block_ids = self._block_ids[request_id]
        block_ids.extend(block.block_id for block in new_computed_blocks)
        block_ids.extend(block.block_id for block in fresh)
        return block_ids

    def cache_blocks(self, request: Request) -> None:
        """Publish the blocks that became full and computed, up to
        ``request.num_computed_tokens``; called after the model has written their K/V."""
        if not self.enable_prefix_caching:
            return
        table = self.block_tables[request.request_id]
        num_full = request.num_computed_tokens // self.block_size
        start = self._num_cached_blocks[request.request_id]
        if num_full <= start:
            return
        assert num_full <= len(table)
        extend_block_hashes(
            request.block_hashes, request.token_ids, self.block_size, request.block_hash_keys
        )
        # Blocks past ``start`` were allocated fresh for this request: private, unhashed.
        for index in range(start, num_full):
            self.pool.cache_block(table[index], request.block_hashes[index])
        self._num_cached_blocks[request.request_id] = num_full

    def get_block_ids(self, request: Request) -> list[int]:
        """The request's block table as ids (the draft model reads its shadow's after a
        rollback); the manager's own list, not to be changed by the caller."""
        return self._block_ids.get(request.request_id, [])

    def free_tail(self, request: Request, num_tokens: int) -> None:
        """Shrink the table to the blocks ``num_tokens`` tokens need, freeing the rest (the
        slots of rejected speculative tokens). Freed blocks are private and unhashed: only
        computed tokens are ever cached, and drafts past ``num_tokens`` never count as such.
        """
        table = self.block_tables[request.request_id]
        keep = cdiv(num_tokens, self.block_size)
        if len(table) <= keep:
            return
        assert self._num_cached_blocks[request.request_id] <= keep
        tail = table[keep:]
        assert all(block.ref_cnt == 1 and block.block_hash is None for block in tail)
        del table[keep:]
        del self._block_ids[request.request_id][keep:]
        self.pool.free(reversed(tail))

    def free(self, request: Request) -> None:
        """Release the request's blocks tail first, so that a later eviction takes the tail
        (least shareable) blocks before the prefix (most shareable) ones."""
        table = self.block_tables.pop(request.request_id, None)
        self._block_ids.pop(request.request_id, None)
        self._num_cached_blocks.pop(request.request_id, None)
        if table is not None:
            self.pool.free(reversed(table))

    def check_step_invariants(self) -> None:
        """Cheap (O(number of tables)) checks the scheduler runs after every step."""
        assert self.pool.num_refs == sum(len(t) for t in self.block_tables.values())
        assert 0 <= self.pool.num_free_blocks <= self.pool.num_blocks

    def check_consistency(self) -> None:
        """Full check: each block's ref count equals the number of tables holding it, and
        the pool's own invariants hold. O(num_blocks), for tests."""
        self.pool.check_consistency()
        holders = [0] * self.pool.num_blocks
        for table in self.block_tables.values():
            assert len({block.block_id for block in table}) == len(table), "block twice"
            for block in table:
                holders[block.block_id] += 1
        for request_id, table in self.block_tables.items():
            assert self._block_ids[request_id] == [block.block_id for block in table]
        for block in self.pool.blocks:
            assert block.ref_cnt == holders[block.block_id], f"block {block.block_id} refs"
