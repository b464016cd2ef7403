"""Block pool: the LRU free list, ref counts, chained hashes and lazy eviction."""

from __future__ import annotations

import pytest

from engine.block_hash import extend_block_hashes, hash_block_tokens
from engine.block_pool import BlockPool, FreeBlockQueue, KVBlock


def ids(blocks: list[KVBlock] | FreeBlockQueue) -> list[int]:
    return [block.block_id for block in blocks]


def test_free_queue_is_fifo_and_removes_from_the_middle() -> None:
    blocks = [KVBlock(block_id=i) for i in range(5)]
    queue = FreeBlockQueue(blocks)
    assert ids(queue) == [0, 1, 2, 3, 4] and len(queue) == 5
    queue.remove(blocks[2])
    assert ids(queue) == [0, 1, 3, 4] and len(queue) == 4
    assert blocks[2].prev_free is None and blocks[2].next_free is None
    assert queue.popleft() is blocks[0]
    queue.append(blocks[2])
    queue.append(blocks[0])
    assert ids(queue) == [1, 3, 4, 2, 0]
    for expected in (1, 3, 4, 2, 0):
        assert queue.popleft().block_id == expected
    assert len(queue) == 0 and ids(queue) == []


def test_free_queue_asserts_on_misuse() -> None:
    block = KVBlock(block_id=0)
    queue = FreeBlockQueue([block])
    with pytest.raises(AssertionError):
        queue.append(block)
    queue.popleft()
    with pytest.raises(AssertionError):
        queue.popleft()
    with pytest.raises(AssertionError):
        queue.remove(block)


def test_allocate_takes_oldest_free_and_free_appends_in_given_order() -> None:
    pool = BlockPool(6)
    first = pool.allocate(3)
    assert ids(first) == [0, 1, 2]
    assert all(b.ref_cnt == 1 for b in first)
    assert pool.num_free_blocks == 3 and pool.num_used_blocks == 3 and pool.num_refs == 3
    pool.free(reversed(first))
    assert ids(pool.free_queue) == [3, 4, 5, 2, 1, 0]
    assert ids(pool.allocate(4)) == [3, 4, 5, 2]
    pool.check_consistency()


def test_shared_block_is_freed_only_by_its_last_holder() -> None:
    pool = BlockPool(2)
    (block,) = pool.allocate(1)
    pool.touch([block])
    assert block.ref_cnt == 2 and pool.num_refs == 2
    pool.free([block])
    assert block.ref_cnt == 1 and pool.num_free_blocks == 1
    pool.free([block])
    assert block.ref_cnt == 0 and pool.num_free_blocks == 2
    with pytest.raises(AssertionError, match="double free"):
        pool.free([block])


def test_allocating_more_than_free_is_an_invariant_violation() -> None:
    pool = BlockPool(2)
    with pytest.raises(AssertionError):
        pool.allocate(3)


def test_lazy_eviction_keeps_freed_block_cached_until_popped() -> None:
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.cache_block(a, 111)
    pool.free([a, b, c])
    # Freed but still findable: a hit takes it off the middle of the free list.
    assert pool.get_cached_block(111) is a
    pool.touch([a])
    assert a.ref_cnt == 1 and ids(pool.free_queue) == [b.block_id, c.block_id]
    pool.free([a])
    assert ids(pool.free_queue) == [b.block_id, c.block_id, a.block_id]
    # Reuse pops b and c first; a keeps its hash until it is popped itself.
    pool.allocate(2)
    assert pool.get_cached_block(111) is a
    (reused,) = pool.allocate(1)
    assert reused is a and a.block_hash is None and pool.get_cached_block(111) is None
    pool.check_consistency()


def test_duplicate_content_keeps_the_first_cached_copy() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.cache_block(a, 7)
    pool.cache_block(b, 7)
    assert pool.get_cached_block(7) is a and b.block_hash is None
    pool.free([b, a])
    pool.check_consistency()


def test_check_consistency_catches_a_corrupted_ref_count() -> None:
    pool = BlockPool(3)
    (block,) = pool.allocate(1)
    block.ref_cnt = 0  # referenced by nobody yet absent from the free list
    with pytest.raises(AssertionError):
        pool.check_consistency()


def test_block_hash_chains_on_the_parent_and_extra_keys() -> None:
    h0 = hash_block_tokens(None, [1, 2, 3, 4])
    assert h0 == hash_block_tokens(None, (1, 2, 3, 4))
    assert h0 != hash_block_tokens(None, [1, 2, 3, 5])
    assert hash_block_tokens(h0, [5, 6]) != hash_block_tokens(h0 + 1, [5, 6])
    assert hash_block_tokens(h0, [5, 6]) != hash_block_tokens(h0, [5, 6], ("salt",))


def test_extend_block_hashes_covers_full_blocks_only_and_is_incremental() -> None:
    tokens = list(range(10))
    hashes: list[int] = []
    extend_block_hashes(hashes, tokens, 4)
    assert len(hashes) == 2
    assert hashes[0] == hash_block_tokens(None, [0, 1, 2, 3])
    assert hashes[1] == hash_block_tokens(hashes[0], [4, 5, 6, 7])
    tokens += [10, 11]
    extend_block_hashes(hashes, tokens, 4)
    assert len(hashes) == 3 and hashes[2] == hash_block_tokens(hashes[1], [8, 9, 10, 11])
    # Same tokens after a different first block: every later hash differs.
    other: list[int] = []
    extend_block_hashes(other, [99, *tokens[1:]], 4)
    assert all(x != y for x, y in zip(hashes, other, strict=True))
