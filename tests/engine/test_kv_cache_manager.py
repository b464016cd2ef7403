"""KV-cache manager: prefix hits, lazy eviction, fork, and a stateful property test that
checks every block's content through a simulated paged KV store (speculative append and
rollback among its moves)."""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from engine.block_pool import KVBlock
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request, RequestId
from engine.sampling_params import SamplingParams

_ids = itertools.count()


def block_ids_of(manager: KVCacheManager, request: Request) -> list[int]:
    return [block.block_id for block in manager.block_tables.get(request.request_id, ())]


def make_request(tokens: list[int], parent: Request | None = None) -> Request:
    return Request(
        request_id=RequestId(f"r{next(_ids)}"),
        prompt_token_ids=list(tokens),
        sampling_params=SamplingParams(),
        parent=parent,
    )


def admit_and_compute(manager: KVCacheManager, request: Request) -> list[int]:
    """Admit with prefix hits, compute the whole prompt, publish its full blocks."""
    hits = manager.get_computed_blocks(request)
    num_hit = len(hits) * manager.block_size
    block_ids = manager.allocate_slots(request, request.num_tokens - num_hit, hits)
    assert block_ids is not None
    request.num_computed_tokens = request.num_tokens
    manager.cache_blocks(request)
    return block_ids


def test_shared_prefix_hits_full_blocks_only() -> None:
    manager = KVCacheManager(num_blocks=16, block_size=4)
    first = make_request(list(range(10)))  # blocks [0..3] [4..7] [8 9]
    first_ids = admit_and_compute(manager, first)
    second = make_request([*range(9), 50, 51])  # shares 9 tokens: two full blocks
    hits = manager.get_computed_blocks(second)
    assert [b.block_id for b in hits] == first_ids[:2]
    assert manager.prefix_cache_queries == 10 + 11
    assert manager.prefix_cache_hits == 8
    block_ids = manager.allocate_slots(second, second.num_tokens - 8, hits)
    assert block_ids is not None and block_ids[:2] == first_ids[:2]
    assert block_ids[2] != first_ids[2]  # the partial block is never shared
    assert [b.ref_cnt for b in hits] == [2, 2]
    manager.check_consistency()


def test_hit_never_covers_the_last_prompt_token() -> None:
    manager = KVCacheManager(num_blocks=16, block_size=4)
    admit_and_compute(manager, make_request(list(range(12))))
    same = make_request(list(range(12)))  # 3 full cached blocks, yet only 2 may hit
    assert len(manager.get_computed_blocks(same)) == 2
    longer = make_request(list(range(13)))
    assert len(manager.get_computed_blocks(longer)) == 3


def test_prefix_caching_disabled_never_hits_or_caches() -> None:
    manager = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    admit_and_compute(manager, make_request(list(range(12))))
    assert manager.get_computed_blocks(make_request(list(range(12)))) == []
    assert manager.pool.cached == {} and manager.prefix_cache_queries == 0
    manager.check_consistency()


def test_freed_cached_blocks_are_reused_by_a_later_hit_then_evicted_tail_first() -> None:
    manager = KVCacheManager(num_blocks=4, block_size=4)
    first = make_request(list(range(13)))  # 4 blocks, 3 full and cached
    ids = admit_and_compute(manager, first)
    manager.free(first)
    assert manager.num_free_blocks == 4 and len(manager.pool.cached) == 3
    # The tail went onto the free list first, so it is evicted first.
    assert [b.block_id for b in manager.pool.free_queue] == ids[::-1]
    again = make_request(list(range(13)))
    hits = manager.get_computed_blocks(again)
    assert [b.block_id for b in hits] == ids[:3]
    assert manager.allocate_slots(again, 1, hits) is not None
    manager.free(again)
    # A stranger needing 2 blocks evicts the old partial block and the third cached block.
    stranger = make_request([100 + i for i in range(8)])
    assert manager.allocate_slots(stranger, 8) == [ids[3], ids[2]]
    assert len(manager.pool.cached) == 2
    assert [b.block_id for b in manager.get_computed_blocks(make_request(list(range(13))))] == ids[
        :2
    ]
    manager.check_consistency()


def test_allocate_fails_cleanly_when_blocks_run_out() -> None:
    manager = KVCacheManager(num_blocks=3, block_size=4)
    first = make_request(list(range(8)))
    assert manager.allocate_slots(first, 8) is not None
    second = make_request([50] * 8)
    assert manager.allocate_slots(second, 8) is None
    assert second.request_id not in manager.block_tables and manager.num_free_blocks == 1
    manager.check_consistency()


def test_fork_shares_the_parent_full_prompt_blocks() -> None:
    manager = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    parent = make_request(list(range(10)))
    parent_ids = manager.allocate_slots(parent, 10)
    assert parent_ids is not None
    parent.num_computed_tokens = 10
    child = make_request(list(range(10)), parent=parent)
    shared = manager.get_forked_blocks(child)
    assert [b.block_id for b in shared] == parent_ids[:2]
    child_ids = manager.allocate_slots(child, 2, shared)
    assert child_ids is not None and child_ids[:2] == parent_ids[:2]
    assert child_ids[2] != parent_ids[2]
    assert [b.ref_cnt for b in shared] == [2, 2]
    manager.free(parent)
    assert [b.ref_cnt for b in shared] == [1, 1]
    manager.check_consistency()


class KVCacheMachine(RuleBasedStateMachine):
    """Random admit / grow / fork / free with prefix caching on.

    Beside the manager runs a simulated paged KV store: computing position ``p`` of a
    request writes its token at its table's slot. After every rule each live request must
    read its computed tokens back from its block table, so a wrong hit, a shared block that
    gets written, or a block reused while still cached all show up as wrong content.
    """

    BLOCK_SIZE = 4
    NUM_BLOCKS = 24
    BASES = ([1] * 30, list(range(30)), [2, 3] * 15)

    live = Bundle("live")

    @initialize()
    def setup(self) -> None:
        self.manager = KVCacheManager(self.NUM_BLOCKS, self.BLOCK_SIZE)
        self.store: dict[int, list[int | None]] = {}
        self.requests: dict[RequestId, Request] = {}
        self.hash_tokens: dict[int, tuple[int, ...]] = {}

    def _compute(self, request: Request, num_new: int, block_ids: list[int]) -> None:
        start = request.num_computed_tokens
        for position in range(start, start + num_new):
            block = self.manager.pool.blocks[block_ids[position // self.BLOCK_SIZE]]
            assert block.ref_cnt == 1 and block.block_hash is None, "write to shared block"
            row = self.store.setdefault(block.block_id, [None] * self.BLOCK_SIZE)
            row[position % self.BLOCK_SIZE] = request.token_ids[position]
        request.num_computed_tokens += num_new
        self.manager.cache_blocks(request)
        for index, block_hash in enumerate(request.block_hashes):
            start = index * self.BLOCK_SIZE
            self.hash_tokens[block_hash] = tuple(request.token_ids[start : start + self.BLOCK_SIZE])

    def _try_allocate(self, request: Request, chunk: int, computed: list[KVBlock]) -> bool:
        num_computed = request.num_computed_tokens + len(computed) * self.BLOCK_SIZE
        num_new = min(chunk, request.num_tokens - num_computed)
        free_before = self.manager.num_free_blocks
        block_ids = self.manager.allocate_slots(request, num_new, computed)
        if block_ids is None:
            assert self.manager.num_free_blocks == free_before
            return False
        request.num_computed_tokens += len(computed) * self.BLOCK_SIZE
        self._compute(request, num_new, block_ids)
        return True

    @rule(
        target=live,
        base=st.sampled_from(BASES),
        prefix_len=st.integers(0, 30),
        suffix=st.lists(st.integers(0, 3), max_size=8),
        chunk=st.integers(1, 40),
    )
    def admit(self, base: list[int], prefix_len: int, suffix: list[int], chunk: int) -> object:
        tokens = base[:prefix_len] + suffix or [0]
        request = make_request(tokens)
        hits = self.manager.get_computed_blocks(request)
        assert len(hits) * self.BLOCK_SIZE < request.num_tokens
        if not self._try_allocate(request, chunk, hits):
            return multiple()  # nothing admitted: no bundle value
        self.requests[request.request_id] = request
        return request

    @rule(
        request=live,
        extra=st.lists(st.integers(0, 3), min_size=1, max_size=6),
        chunk=st.integers(1, 12),
    )
    def grow(self, request: Request, extra: list[int], chunk: int) -> None:
        if request.request_id not in self.requests:
            return
        if request.num_computed_tokens == request.num_tokens:
            for token in extra:  # decode: sampled tokens join the sequence
                request.append_token(token)
        self._try_allocate(request, chunk, [])

    @rule(
        request=live,
        drafts=st.lists(st.integers(0, 3), min_size=1, max_size=9),
        num_accepted=st.integers(0, 9),
        bonus=st.integers(0, 3),
    )
    def speculate(self, request: Request, drafts: list[int], num_accepted: int, bonus: int) -> None:
        """A decode verifying drafts: the last token and every draft are written, then only
        the accepted drafts and the bonus token join the sequence and the rest roll back."""
        if request.request_id not in self.requests:
            return
        if request.num_computed_tokens != request.num_tokens - 1:
            return
        block_ids = self.manager.allocate_slots(request, 1 + len(drafts))
        if block_ids is None:
            return
        written = [request.token_ids[-1], *drafts]
        for offset, token in enumerate(written):
            position = request.num_computed_tokens + offset
            block = self.manager.pool.blocks[block_ids[position // self.BLOCK_SIZE]]
            assert block.ref_cnt == 1 and block.block_hash is None, "write to shared block"
            self.store.setdefault(block.block_id, [None] * self.BLOCK_SIZE)[
                position % self.BLOCK_SIZE
            ] = token
        for token in [*drafts[: min(num_accepted, len(drafts))], bonus]:
            request.append_token(token)
        request.num_computed_tokens = request.num_tokens - 1
        self.manager.cache_blocks(request)
        for index, block_hash in enumerate(request.block_hashes):
            start = index * self.BLOCK_SIZE
            self.hash_tokens[block_hash] = tuple(request.token_ids[start : start + self.BLOCK_SIZE])
        self.manager.free_tail(request, request.num_tokens)
        kept = len(self.manager.get_block_ids(request)) * self.BLOCK_SIZE
        assert request.num_computed_tokens <= kept < request.num_tokens + self.BLOCK_SIZE, (
            "a rolled-back block was kept"
        )

    @rule(request=live, chunk=st.integers(1, 40))
    def fork(self, request: Request, chunk: int) -> None:
        if request.request_id not in self.requests or request.parent is not None:
            return
        if request.num_computed_tokens < request.num_prompt_tokens:
            return
        child = make_request(request.prompt_token_ids, parent=request)
        shared = self.manager.get_forked_blocks(child)
        if self._try_allocate(child, chunk, shared):
            self.requests[child.request_id] = child

    @rule(request=consumes(live))
    def free(self, request: Request) -> None:
        if self.requests.pop(request.request_id, None) is not None:
            self.manager.free(request)

    @invariant()
    def blocks_are_consistent(self) -> None:
        manager, pool = self.manager, self.manager.pool
        manager.check_consistency()
        holders: dict[int, int] = {}
        for request in self.requests.values():
            for block_id in block_ids_of(manager, request):
                holders[block_id] = holders.get(block_id, 0) + 1
        for block in pool.blocks:
            assert block.ref_cnt == holders.get(block.block_id, 0)
        free = {b.block_id for b in pool.free_queue}
        assert free == {b.block_id for b in pool.blocks if b.ref_cnt == 0}
        assert pool.num_free_blocks + pool.num_used_blocks == self.NUM_BLOCKS
        assert len(free) == pool.num_free_blocks
        for block_hash, block in pool.cached.items():
            assert block.block_hash == block_hash
            assert tuple(self.store[block.block_id]) == self.hash_tokens[block_hash]

    @invariant()
    def tables_read_back_the_computed_tokens(self) -> None:
        for request in self.requests.values():
            block_ids = block_ids_of(self.manager, request)
            assert len(block_ids) * self.BLOCK_SIZE >= request.num_computed_tokens
            read = [
                self.store[block_ids[p // self.BLOCK_SIZE]][p % self.BLOCK_SIZE]
                for p in range(request.num_computed_tokens)
            ]
            assert read == request.token_ids[: request.num_computed_tokens]


KVCacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestKVCacheMachine = KVCacheMachine.TestCase
