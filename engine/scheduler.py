"""Decides, each step, which tokens of which requests the model computes.

There are no prefill or decode phases. Every request has ``num_computed_tokens`` catching up
with ``num_tokens``; a step hands out at most ``max_num_batched_tokens`` tokens::

    request A (decode):          [ computed ............ | 1 ]
    request B (prefill, chunk):  [ computed | 300 of 900 ]
    request C (new, prefix hit): [ cached blocks | rest ]
                                  one step = A's 1 + B's 300 + C's rest <= budget

Running requests go first (in priority, then arrival order), then waiting ones. When the KV
cache runs out, the worst running request is preempted: its blocks are freed and it later
recomputes its prompt and its outputs so far as one longer prompt.

Tenants share each step. On the CPU a step's time grows with the rows in it, so one
tenant's backlog of 80 running requests makes every step of another tenant's 8 slow. While
requests of two or more tenants are in the engine, a step runs at most ``cap`` requests of
any one tenant, the rest of its running requests keeping their blocks and skipping the step::

    in the engine:  A 80, B 8, C 3   ->  cap = max(fair_step_rows, 8)  (the second-largest)
    one step:       A's first 8 (by queue order), all of B's, all of C's

With one tenant in the engine nothing is capped (``fair_step_rows`` is 0 on CUDA by default,
where a decode step costs about the same at 8 rows as at 256).

A request under a LoRA adapter also needs a device slot holding it to run (``lora_slots``):
while every slot is in use by other adapters it stays waiting, and requests behind it that
need no new slot go ahead of it. It gives its slot back when it stops running.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from engine.config import EngineConfig
from engine.kv_cache_manager import KVCacheManager, cdiv
from engine.lora_slots import LoRASlotTable
from engine.request import Request, RequestId, RequestStatus
from engine.scheduler_output import ScheduledRequest, SchedulerOutput


@dataclass(slots=True)
class SchedulerStats:
    """A snapshot for logs and metrics: KV blocks, and prefix-cache counts in tokens."""

    num_running: int
    num_waiting: int
    num_used_blocks: int
    num_free_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int


class Scheduler:
    """Owns the waiting and running queues and the KV-cache manager.

    Both queues stay sorted by ``(priority, arrival_time, order of add_request)``, so the
    running queue's last request is always the one to preempt, and a preempted request
    re-enters the waiting queue ahead of every later arrival of its priority. A request's
    ``priority`` and ``arrival_time`` must not change once it is added.
    """

    def __init__(self, config: EngineConfig, num_kv_blocks: int, max_model_len: int) -> None:
        assert max_model_len > 0
        self.block_size = config.block_size
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.max_num_seqs = config.max_num_seqs
        self.max_model_len = max_model_len
        self.kv_cache = KVCacheManager(
            num_kv_blocks, config.block_size, config.enable_prefix_caching
        )
        self.requests: dict[RequestId, Request] = {}  # every unfinished request
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0
        self.lora_slots = LoRASlotTable(config.max_loras) if config.enable_lora else None
        self._arrival_order: dict[RequestId, int] = {}
        self._num_added = 0
        self.step_row_floor = config.step_row_floor
        self._tenant_sizes: Counter[Hashable | None] = Counter()  # requests in the engine

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def add_request(self, request: Request) -> None:
        """Queue a new request; raise ValueError if it can never run."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        if request.num_prompt_tokens == 0:
            raise ValueError("the prompt must contain at least one token")
        if request.lora_request is not None and self.lora_slots is None:
            raise ValueError("a LoRA request needs an engine made with enable_lora=True")
        if request.num_prompt_tokens > self.max_model_len:
            raise ValueError(
                f"prompt has {request.num_prompt_tokens} tokens, more than the model's "
                f"max_model_len={self.max_model_len}"
            )
        max_len = min(request.num_prompt_tokens + request.max_tokens, self.max_model_len)
        if cdiv(max_len, self.block_size) > self.kv_cache.pool.num_blocks:
            raise ValueError(
                f"prompt plus max_tokens needs {cdiv(max_len, self.block_size)} KV blocks, "
                f"the cache has only {self.kv_cache.pool.num_blocks}"
            )
        assert request.status is RequestStatus.WAITING and request.num_computed_tokens == 0
        self._arrival_order[request.request_id] = self._num_added
        self._num_added += 1
        self.requests[request.request_id] = request
        self._tenant_sizes[request.tenant] += 1
        bisect.insort(self.waiting, request, key=self._order_key)

    def schedule(self) -> SchedulerOutput:
        """Plan one step: running requests first, then admit waiting ones (unless this step
        had to preempt, which means the cache is already too full to admit anyone)."""
        output = SchedulerOutput()
        rows = _TenantRows(self._tenant_cap())
        budget = self._schedule_running(output, self.max_num_batched_tokens, rows)
        if not output.preempted:
            self._schedule_waiting(output, budget, rows)
        self._check_invariants(output)
        return output

    def _tenant_cap(self) -> int | None:
        """The most requests of one tenant a step may run; ``None``: no cap this step.

        Waiting requests count too, so a newcomer's first step (its prefill) is already
        shared. While its requests wait for blocks, the capped tenant still runs at least
        ``step_row_floor`` rows, and its capped requests, run first by queue order, finish
        and free blocks sooner than 80 running a token each would."""
        if not self.step_row_floor or len(self._tenant_sizes) < 2:
            return None
        return max(self.step_row_floor, heapq.nlargest(2, self._tenant_sizes.values())[1])

    def update_from_output(
        self, output: SchedulerOutput, sampled_token_ids: list[list[int]]
    ) -> list[Request]:
        """Record a finished step: advance each request by its chunk, append its new tokens
        (aligned with ``output.sampled_requests``: one sampled token, or the accepted drafts
        and the target's own next token after a speculative step), cache the blocks that
        became full, and return the requests that finished on a token (EOS, stop token,
        length). Tokens after the one that finished a request are dropped.

        Rejected drafts roll back: their K/V slots lie past ``num_computed_tokens`` and are
        overwritten later, and whole blocks holding nothing else go back to the pool.
        """
        assert len(sampled_token_ids) == sum(1 for s in output.scheduled if s.sample)
        tokens = iter(sampled_token_ids)
        finished: list[Request] = []
        for scheduled in output.scheduled:
            request = scheduled.request
            new_tokens = next(tokens) if scheduled.sample else None
            request.draft_token_ids = []
            if request.status is not RequestStatus.RUNNING:  # aborted since schedule()
                continue
            assert request.num_computed_tokens == scheduled.start_position
            if new_tokens is None:
                request.num_computed_tokens += scheduled.num_new_tokens
                self.kv_cache.cache_blocks(request)
                continue
            assert 1 <= len(new_tokens) <= 1 + scheduled.num_draft_tokens
            status = self._append_tokens(request, new_tokens)
            # Every appended token but the last had its K/V written by this step.
            request.num_computed_tokens = request.num_tokens - 1
            self.kv_cache.cache_blocks(request)
            if status is not None:
                self._finish(request, status)
                finished.append(request)
            elif scheduled.num_draft_tokens:
                self.kv_cache.free_tail(request, request.num_tokens)
        return finished

    def _append_tokens(self, request: Request, new_tokens: list[int]) -> RequestStatus | None:
        """Append tokens one at a time until one finishes the request; its finished state."""
        for token in new_tokens:
            request.append_token(token)
            status = request.check_token_stop()
            if status is None and request.num_tokens >= self.max_model_len:
                status = RequestStatus.FINISHED_LENGTH
            if status is not None:
                return status
        return None

    def finish_requests(
        self, request_ids: Iterable[RequestId], status: RequestStatus
    ) -> list[Request]:
        """Finish waiting or running requests from outside (abort, stop string) and free
        their blocks. Ids that are unknown or already finished are skipped: an abort may
        race with the request finishing by itself."""
        assert status.is_finished
        finished = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is not None:
                self._finish(request, status)
                finished.append(request)
        return finished

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            num_used_blocks=self.kv_cache.num_used_blocks,
            num_free_blocks=self.kv_cache.num_free_blocks,
            prefix_cache_queries=self.kv_cache.prefix_cache_queries,
            prefix_cache_hits=self.kv_cache.prefix_cache_hits,
            num_preemptions=self.num_preemptions,
        )

    def _order_key(self, request: Request) -> tuple[int, float, int]:
        return (request.priority, request.arrival_time, self._arrival_order[request.request_id])

    def _schedule_running(self, output: SchedulerOutput, budget: int, rows: _TenantRows) -> int:
        """Give each running request its next chunk (a decode is a chunk of one token, plus
        its drafts when it has some) unless its tenant has used its rows; return the budget
        left. Preempts from the tail of the queue when blocks run out."""
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            if not rows.take(request.tenant):
                index += 1  # skips this step, keeps its blocks
                continue
            num_drafts, block_ids = self._allocate_drafts(request, budget)
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            assert num_new > 0, "a running request always has a token to compute"
            if block_ids is None:
                block_ids = self._allocate_or_preempt(request, num_new, output)
            if block_ids is None:
                break  # the request itself was the last in the queue and got preempted
            num_new += num_drafts
            output.scheduled.append(self._make_scheduled(request, num_new, block_ids, num_drafts))
            budget -= num_new
            index += 1
        return budget

    def _allocate_drafts(self, request: Request, budget: int) -> tuple[int, list[int] | None]:
        """Slots for a decode plus its drafts, as many drafts as the budget and the context
        allow, if free blocks suffice without preempting anyone; else ``(0, None)``: drafts
        never cost another request its place."""
        if not request.draft_token_ids or not request.is_decoding:
            return 0, None
        num_drafts = min(
            len(request.draft_token_ids), budget - 1, self.max_model_len - request.num_tokens
        )
        if num_drafts <= 0:
            return 0, None
        block_ids = self.kv_cache.allocate_slots(request, 1 + num_drafts)
        return (num_drafts, block_ids) if block_ids is not None else (0, None)

    def _allocate_or_preempt(
        self, request: Request, num_new: int, output: SchedulerOutput
    ) -> list[int] | None:
        """Allocate slots, preempting the worst running request until they fit. The victim
        is always the queue's tail, so it is never one already scheduled this step."""
        while True:
            block_ids = self.kv_cache.allocate_slots(request, num_new)
            if block_ids is not None:
                return block_ids
            victim = self.running.pop()
            self._preempt(victim)
            output.preempted.append(victim)
            if victim is request:
                return None

    def _schedule_waiting(self, output: SchedulerOutput, budget: int, rows: _TenantRows) -> None:
        """Admit waiting requests in queue order while budget, sequence slots and blocks
        last. A sibling of an ``n > 1`` request waits (without blocking the queue) until its
        parent has computed the prompt they share; so does a request whose tenant has used
        its rows this step."""
        index = 0
        while index < len(self.waiting) and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[index]
            parent = request.parent
            if not rows.has_room(request.tenant):
                index += 1
                continue
            if request.lora_request is not None and not self._lora_slot_available(request):
                index += 1  # every slot is busy with other adapters: wait, let others by
                continue
            if request.pooling_params is not None:
                computed = []  # pooling needs every prompt position's hidden state
            elif parent is None or parent.status.is_finished:
                computed = self.kv_cache.get_computed_blocks(request)
            elif parent.num_computed_tokens >= parent.num_prompt_tokens:
                computed = self.kv_cache.get_forked_blocks(request)
            else:
                index += 1
                continue
            num_computed = len(computed) * self.block_size
            num_new = min(request.num_tokens - num_computed, budget)
            block_ids = self.kv_cache.allocate_slots(request, num_new, computed)
            if block_ids is None:
                break  # FCFS: nobody behind it may overtake it for blocks
            rows.take(request.tenant)
            self._acquire_lora_slot(request)
            del self.waiting[index]
            if request.status is RequestStatus.WAITING:
                request.num_cached_tokens = num_computed
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_computed
            bisect.insort(self.running, request, key=self._order_key)
            output.scheduled.append(self._make_scheduled(request, num_new, block_ids, 0))
            budget -= num_new

    def _make_scheduled(
        self, request: Request, num_new: int, block_ids: list[int], num_drafts: int
    ) -> ScheduledRequest:
        start = request.num_computed_tokens
        end = start + num_new - num_drafts
        token_ids = request.token_ids[start:end]
        if num_drafts:
            token_ids.extend(request.draft_token_ids[:num_drafts])
        return ScheduledRequest(
            request=request,
            token_ids=token_ids,
            start_position=start,
            block_ids=block_ids,
            sample=end == request.num_tokens and request.pooling_params is None,
            num_draft_tokens=num_drafts,
        )

    def _lora_slot_available(self, request: Request) -> bool:
        assert self.lora_slots is not None and request.lora_request is not None
        return self.lora_slots.can_acquire(request.lora_request.int_id)

    def _acquire_lora_slot(self, request: Request) -> None:
        """Give an admitted adapter request the slot holding its adapter (loaded into one
        the step before its forward pass if none does); ``_lora_slot_available`` said so."""
        if request.lora_request is None:
            return
        assert self.lora_slots is not None and request.lora_slot < 0
        slot = self.lora_slots.acquire(request.lora_request.int_id)
        assert slot is not None, "checked by _lora_slot_available, nothing ran in between"
        request.lora_slot = slot

    def _release_lora_slot(self, request: Request) -> None:
        if request.lora_slot >= 0:
            assert self.lora_slots is not None
            self.lora_slots.release(request.lora_slot)
            request.lora_slot = -1

    def _preempt(self, request: Request) -> None:
        self._release_lora_slot(request)
        self.kv_cache.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.draft_token_ids = []
        request.num_preemptions += 1
        self.num_preemptions += 1
        bisect.insort(self.waiting, request, key=self._order_key)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        queue = self.running if request.status is RequestStatus.RUNNING else self.waiting
        index = bisect.bisect_left(queue, self._order_key(request), key=self._order_key)
        assert queue[index] is request
        del queue[index]
        self._release_lora_slot(request)
        self.kv_cache.free(request)
        request.status = status
        del self.requests[request.request_id]
        del self._arrival_order[request.request_id]
        self._tenant_sizes[request.tenant] -= 1
        if not self._tenant_sizes[request.tenant]:
            del self._tenant_sizes[request.tenant]

    def _check_invariants(self, output: SchedulerOutput) -> None:
        """Cheap per-step checks: O(scheduled requests + block tables), no block walk."""
        assert output.num_batched_tokens <= self.max_num_batched_tokens
        assert len(self.running) <= self.max_num_seqs
        assert len(self.running) + len(self.waiting) == len(self.requests)
        assert self._tenant_sizes.total() == len(self.requests)
        assert len(self.kv_cache.block_tables) == len(self.running), "only running hold blocks"
        assert len({id(s.request) for s in output.scheduled}) == len(output.scheduled)
        if self.lora_slots is not None:
            in_use = [r.lora_slot for r in self.running if r.lora_slot >= 0]
            assert sum(self.lora_slots.users) == len(in_use), "a LoRA slot leaked"
        for scheduled in output.scheduled:
            end = scheduled.start_position + scheduled.num_new_tokens
            assert scheduled.request.status is RequestStatus.RUNNING
            assert end <= self.max_model_len
            assert len(scheduled.block_ids) * self.block_size >= end
        self.kv_cache.check_step_invariants()


@dataclass(slots=True)
class _TenantRows:
    """The rows each tenant has taken in the step being planned, against the step's cap."""

    cap: int | None
    taken: Counter[Hashable | None] = field(default_factory=Counter)

    def has_room(self, tenant: Hashable | None) -> bool:
        return self.cap is None or self.taken[tenant] < self.cap

    def take(self, tenant: Hashable | None) -> bool:
        """Count one row for ``tenant`` if it has room; whether it had (uncapped: nothing
        to count)."""
        if self.cap is None:
            return True
        if self.taken[tenant] >= self.cap:
            return False
        self.taken[tenant] += 1
        return True
