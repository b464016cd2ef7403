"""The fixed set of KV blocks: ref counts, an LRU free list and the prefix-cache map.

A block is either referenced (``ref_cnt > 0``, held by one or more block tables) or free (on
the free list). A free block may still carry a hash: its K/V stay valid and a later request
with the same prefix takes it straight off the free list. The hash is dropped only when the
block is popped for reuse (lazy eviction), so the least recently freed cached blocks go first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from engine.block_hash import BlockHash


@dataclass(slots=True, eq=False)
class KVBlock:
    """One block of ``block_size`` KV slots; ``prev_free``/``next_free`` link the free list."""

    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None
    prev_free: KVBlock | None = None
    next_free: KVBlock | None = None


class FreeBlockQueue:
    """Intrusive doubly-linked list of free blocks in LRU order, every operation O(1).

    Two sentinels bound the list so that no operation tests for an empty end::

        head <-> b7 <-> b2 <-> b9 <-> tail
                 ^ popleft (oldest)    ^ append (just freed)

    ``remove`` unlinks a block from the middle when a prefix-cache hit revives it.
    """

    def __init__(self, blocks: Iterable[KVBlock]) -> None:
        self._head = KVBlock(block_id=-1)
        self._tail = KVBlock(block_id=-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self._len = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[KVBlock]:
        node = self._head.next_free
        while node is not self._tail:
            assert node is not None
            yield node
            node = node.next_free

    def popleft(self) -> KVBlock:
        block = self._head.next_free
        assert block is not None and block is not self._tail, "pop from an empty free list"
        self.remove(block)
        return block

    def append(self, block: KVBlock) -> None:
        assert block.prev_free is None and block.next_free is None, "block already free"
        last = self._tail.prev_free
        assert last is not None
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self._len += 1

    def remove(self, block: KVBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        assert prev is not None and nxt is not None, "block is not on the free list"
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self._len -= 1


class BlockPool:
    """Hands out blocks, counts references and keeps the ``hash -> block`` prefix cache.

    ``num_refs`` is the sum of all ref counts; it must equal the total length of all block
    tables, which the scheduler checks every step at the cost of a few additions.
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        assert num_blocks > 0
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(block_id=i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[BlockHash, KVBlock] = {}
        self.num_refs = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def get_cached_block(self, block_hash: BlockHash) -> KVBlock | None:
        return self.cached.get(block_hash)

    def allocate(self, num_blocks: int) -> list[KVBlock]:
        """Pop ``num_blocks`` blocks off the free list, evicting any hash they still carry."""
        assert 0 <= num_blocks <= len(self.free_queue), "allocate more blocks than are free"
        blocks = [self.free_queue.popleft() for _ in range(num_blocks)]
        for block in blocks:
            assert block.ref_cnt == 0
            if block.block_hash is not None:
                assert self.cached.get(block.block_hash) is block
                del self.cached[block.block_hash]
                block.block_hash = None
            block.ref_cnt = 1
        self.num_refs += num_blocks
        return blocks

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take one more reference on already-computed blocks (prefix hit or fork)."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1
            self.num_refs += 1

    def free(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference each; blocks reaching zero join the free list in the given
        order, so callers pass the blocks they want evicted first, first."""
        for block in blocks:
            assert block.ref_cnt > 0, f"double free of block {block.block_id}"
            block.ref_cnt -= 1
            self.num_refs -= 1
            if block.ref_cnt == 0:
                self.free_queue.append(block)

    def cache_block(self, block: KVBlock, block_hash: BlockHash) -> None:
        """Publish a full, computed block under its chained hash.

        If another block already holds the same content (two requests computed the same
        prefix in the same step), that one stays the cached copy and this block stays
        private: it is recycled without ever entering the map.
        """
        assert self.enable_caching
        assert block.ref_cnt > 0 and block.block_hash is None
        if block_hash not in self.cached:
            block.block_hash = block_hash
            self.cached[block_hash] = block

    def reset_cache(self) -> None:
        """Forget every cached block, so that later requests compute every prompt in full
        (benchmarks comparing runs over the same prompts). Only when no block is in use: a
        running request's blocks must keep their hashes for the requests that share them."""
        if self.num_refs:
            raise RuntimeError("the prefix cache can only be reset while no request runs")
        for block in self.cached.values():
            block.block_hash = None
        self.cached.clear()

    def check_consistency(self) -> None:
        """Walk every block: O(num_blocks), for tests and debugging, not for each step."""
        free_ids = set()
        for block in self.free_queue:
            assert block.ref_cnt == 0, f"free block {block.block_id} is referenced"
            free_ids.add(block.block_id)
        assert len(free_ids) == len(self.free_queue)
        for block in self.blocks:
            assert block.ref_cnt >= 0
            assert (block.ref_cnt == 0) == (block.block_id in free_ids)
            if block.block_hash is not None:
                assert self.cached.get(block.block_hash) is block
        for block_hash, block in self.cached.items():
            assert block.block_hash == block_hash
        assert self.num_refs == sum(block.ref_cnt for block in self.blocks)
