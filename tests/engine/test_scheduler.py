"""Scheduler tests driven by a fake model.

``FakeModel`` stands in for the model runner and sampler, and says so: it keeps a simulated
paged KV store, writes each scheduled token at the slot its block table gives, checks that
every scheduled request reads its whole context back from earlier steps' writes, and
"samples" a token that is a function of that context. A request that was preempted and
recomputed therefore produces exactly the tokens it would have produced uninterrupted.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable
from typing import Any

import pytest

from engine.config import EngineConfig
from engine.request import Request, RequestId, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.scheduler_output import SchedulerOutput

VOCAB = 1000


class FakeModel:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.block_size = scheduler.block_size
        self.kv: dict[int, int] = {}  # slot -> token whose K/V sits there

    def _slot(self, block_ids: list[int], position: int) -> int:
        return block_ids[position // self.block_size] * self.block_size + (
            position % self.block_size
        )

    def next_token(self, context: list[int]) -> int:
        return (sum(context) * 31 + len(context) * 7) % VOCAB

    def execute(self, output: SchedulerOutput) -> list[list[int]]:
        """Each sampled request's new tokens: its sampled one, or, when it verifies drafts,
        the drafts that equal what it would have sampled, then the token after them."""
        pool = self.scheduler.kv_cache.pool
        for s in output.scheduled:  # context computed in earlier steps must read back
            cached = [self.kv.get(self._slot(s.block_ids, p)) for p in range(s.start_position)]
            assert cached == s.request.token_ids[: s.start_position], s.request.request_id
            num_real = s.num_new_tokens - s.num_draft_tokens
            assert s.token_ids == [
                *s.request.token_ids[s.start_position : s.start_position + num_real],
                *s.request.draft_token_ids[: s.num_draft_tokens],
            ]
        sampled = []
        for s in output.scheduled:
            for i, token in enumerate(s.token_ids):
                position = s.start_position + i
                assert pool.blocks[s.block_ids[position // self.block_size]].ref_cnt == 1
                self.kv[self._slot(s.block_ids, position)] = token
            if s.sample:
                context = list(s.request.token_ids)
                tokens = [self.next_token(context)]
                for draft in s.draft_token_ids:
                    if draft != tokens[-1]:
                        break
                    context.append(draft)
                    tokens.append(self.next_token(context))
                sampled.append(tokens)
        return sampled


_ids = itertools.count()


def make_request(
    num_prompt: int,
    max_tokens: int = 4,
    *,
    prompt: list[int] | None = None,
    priority: int = 0,
    parent: Request | None = None,
    eos: int | None = None,
    tenant: Hashable | None = None,
) -> Request:
    tokens = prompt if prompt is not None else [random.randrange(VOCAB) for _ in range(num_prompt)]
    return Request(
        request_id=RequestId(f"req{next(_ids)}"),
        prompt_token_ids=tokens,
        sampling_params=SamplingParams(max_tokens=max_tokens, ignore_eos=eos is None),
        eos_token_id=eos,
        priority=priority,
        parent=parent,
        tenant=tenant,
    )


def make_scheduler(
    num_blocks: int = 64,
    *,
    block_size: int = 4,
    budget: int = 64,
    max_num_seqs: int = 16,
    max_model_len: int = 256,
    prefix_caching: bool = True,
    fair_step_rows: int | None = None,
) -> Scheduler:
    config = EngineConfig(
        model="fake",
        block_size=block_size,
        max_num_batched_tokens=budget,
        max_num_seqs=max_num_seqs,
        enable_prefix_caching=prefix_caching,
        fair_step_rows=fair_step_rows,
    )
    return Scheduler(config, num_kv_blocks=num_blocks, max_model_len=max_model_len)


def make_fake_engine(**scheduler_options: Any) -> tuple[Scheduler, FakeModel]:
    """A scheduler (``make_scheduler``'s options) and the fake model that runs its steps."""
    scheduler = make_scheduler(**scheduler_options)
    return scheduler, FakeModel(scheduler)


def step(scheduler: Scheduler, model: FakeModel) -> tuple[SchedulerOutput, list[Request]]:
    output = scheduler.schedule()
    assert output.num_batched_tokens <= scheduler.max_num_batched_tokens
    finished = scheduler.update_from_output(output, model.execute(output))
    scheduler.kv_cache.check_consistency()
    return output, finished


def run_all(scheduler: Scheduler, model: FakeModel | None = None) -> list[SchedulerOutput]:
    """Step until every request finished; pass the model of earlier steps to keep its KV."""
    model = model or FakeModel(scheduler)
    outputs: list[SchedulerOutput] = []
    while scheduler.has_unfinished_requests():
        assert len(outputs) < 2000, "no progress"
        outputs.append(step(scheduler, model)[0])
    assert scheduler.kv_cache.block_tables == {}
    return outputs


def test_chunked_prefill_spreads_a_long_prompt_under_the_budget() -> None:
    scheduler = make_scheduler(budget=32)
    request = make_request(100, max_tokens=3)
    scheduler.add_request(request)
    outputs = run_all(scheduler)
    chunks = [(o.scheduled[0].start_position, o.scheduled[0].num_new_tokens) for o in outputs]
    assert chunks == [(0, 32), (32, 32), (64, 32), (96, 4), (100, 1), (101, 1)]
    assert [o.scheduled[0].sample for o in outputs] == [False, False, False, True, True, True]
    assert request.status is RequestStatus.FINISHED_LENGTH
    assert request.num_output_tokens == 3 and request.num_computed_tokens == 102


def test_prefill_and_decode_of_different_requests_share_a_step() -> None:
    scheduler, model = make_fake_engine(budget=20)
    first = make_request(8, max_tokens=10)
    scheduler.add_request(first)
    step(scheduler, model)
    second = make_request(30, max_tokens=2)
    scheduler.add_request(second)
    output, _ = step(scheduler, model)
    assert [(s.request, s.num_new_tokens, s.sample) for s in output.scheduled] == [
        (first, 1, True),
        (second, 19, False),
    ]
    assert output.num_batched_tokens == 20
    output, _ = step(scheduler, model)
    assert [(s.request, s.num_new_tokens, s.sample) for s in output.scheduled] == [
        (first, 1, True),
        (second, 11, True),
    ]


def test_token_budget_and_max_num_seqs_hold_under_load() -> None:
    random.seed(1)
    scheduler = make_scheduler(num_blocks=200, budget=24, max_num_seqs=3)
    requests = [make_request(random.randint(1, 60), random.randint(1, 8)) for _ in range(12)]
    for request in requests:
        scheduler.add_request(request)
    outputs = run_all(scheduler)
    assert all(o.num_batched_tokens <= 24 for o in outputs)
    assert all(len(o.scheduled) <= 3 for o in outputs)
    assert max(o.num_batched_tokens for o in outputs) == 24
    for request in requests:
        assert request.num_output_tokens == request.sampling_params.max_tokens
        assert request.num_computed_tokens == request.num_tokens - 1


def test_preemption_with_a_tiny_cache_recomputes_to_the_same_outputs() -> None:
    random.seed(2)
    specs = [(random.randint(5, 30), random.randint(5, 20)) for _ in range(8)]
    prompts = [[random.randrange(VOCAB) for _ in range(n)] for n, _ in specs]

    def run(num_blocks: int) -> tuple[Scheduler, list[Request]]:
        scheduler = make_scheduler(num_blocks=num_blocks, budget=40)
        requests = [
            make_request(0, max_tokens, prompt=list(prompt))
            for prompt, (_, max_tokens) in zip(prompts, specs, strict=True)
        ]
        for request in requests:
            scheduler.add_request(request)
        run_all(scheduler)
        return scheduler, requests

    roomy, reference = run(num_blocks=200)
    tight, preempted = run(num_blocks=14)
    assert roomy.num_preemptions == 0
    assert tight.num_preemptions > 0 and tight.stats().num_preemptions == tight.num_preemptions
    assert sum(r.num_preemptions for r in preempted) == tight.num_preemptions
    for ref, req in zip(reference, preempted, strict=True):
        assert req.status is RequestStatus.FINISHED_LENGTH
        assert req.output_token_ids == ref.output_token_ids
        assert req.num_computed_tokens == req.num_tokens - 1
    assert tight.stats().num_used_blocks == 0


def test_preemption_evicts_the_last_admitted_and_requeues_it_first() -> None:
    scheduler, model = make_fake_engine(num_blocks=4, block_size=4, budget=64)
    first, second, third = (make_request(7, max_tokens=9) for _ in range(3))
    for request in (first, second, third):
        scheduler.add_request(request)
    output, _ = step(scheduler, model)  # two fit (2 blocks each), the third waits
    assert [s.request for s in output.scheduled] == [first, second]
    step(scheduler, model)  # both decode into their second block (token 8)
    output, _ = step(scheduler, model)  # token 9 needs a third block: second is evicted
    assert output.preempted == [second]
    assert [s.request for s in output.scheduled] == [first]
    assert second.status is RequestStatus.PREEMPTED and second.num_computed_tokens == 0
    assert scheduler.waiting == [second, third]
    assert second.num_output_tokens == 2  # kept, recomputed as part of its prompt later
    outputs = run_all(scheduler, model)
    resumed = next(s for o in outputs for s in o.scheduled if s.request is second)
    assert (
        resumed.start_position == 0
        and resumed.token_ids == second.token_ids[: resumed.num_new_tokens]
    )
    assert second.status is RequestStatus.FINISHED_LENGTH and second.num_output_tokens == 9


def test_a_request_preempting_itself_stops_for_the_step() -> None:
    scheduler, model = make_fake_engine(num_blocks=3, block_size=4, budget=64, max_model_len=12)
    first, second = make_request(4, max_tokens=8), make_request(4, max_tokens=8)
    scheduler.add_request(first)
    scheduler.add_request(second)
    step(scheduler, model)  # 1 block each, both sample
    output, _ = step(scheduler, model)  # both need a second block: only one is free
    assert output.preempted == [second] and [s.request for s in output.scheduled] == [first]
    run_all(scheduler, model)
    assert first.num_tokens == second.num_tokens == 12
    assert first.status is second.status is RequestStatus.FINISHED_LENGTH


def test_priority_lower_value_is_admitted_first_then_arrival_order() -> None:
    scheduler = make_scheduler(budget=64, max_num_seqs=1)
    low, high, mid, high_later = (make_request(5, max_tokens=2, priority=p) for p in (5, 0, 3, 0))
    for request in (low, high, mid, high_later):
        scheduler.add_request(request)
    admitted: list[Request] = []
    for output in run_all(scheduler):
        for s in output.scheduled:
            if s.start_position == 0:
                admitted.append(s.request)
    assert admitted == [high, high_later, mid, low]


def test_abort_of_waiting_and_running_requests_frees_their_blocks() -> None:
    scheduler, model = make_fake_engine(num_blocks=16, budget=64, max_num_seqs=1)
    running, waiting = make_request(10, max_tokens=50), make_request(10, max_tokens=50)
    scheduler.add_request(running)
    scheduler.add_request(waiting)
    step(scheduler, model)
    assert scheduler.stats().num_used_blocks == 3
    aborted = scheduler.finish_requests(
        [waiting.request_id, running.request_id, RequestId("unknown")],
        RequestStatus.FINISHED_ABORTED,
    )
    assert aborted == [waiting, running]
    assert all(r.status is RequestStatus.FINISHED_ABORTED for r in aborted)
    assert scheduler.stats().num_used_blocks == 0
    assert not scheduler.has_unfinished_requests() and scheduler.schedule().is_empty
    assert scheduler.finish_requests([running.request_id], RequestStatus.FINISHED_ABORTED) == []


def test_abort_between_schedule_and_update_is_skipped() -> None:
    scheduler, model = make_fake_engine()
    kept, dropped = make_request(6, max_tokens=3), make_request(6, max_tokens=3)
    scheduler.add_request(kept)
    scheduler.add_request(dropped)
    output = scheduler.schedule()
    sampled = model.execute(output)
    scheduler.finish_requests([dropped.request_id], RequestStatus.FINISHED_ABORTED)
    scheduler.update_from_output(output, sampled)
    assert kept.num_output_tokens == 1 and dropped.num_output_tokens == 0
    assert kept.num_computed_tokens == 6 and dropped.status is RequestStatus.FINISHED_ABORTED
    scheduler.kv_cache.check_consistency()


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_n_children_share_the_parent_prompt_blocks(prefix_caching: bool) -> None:
    scheduler, model = make_fake_engine(block_size=4, prefix_caching=prefix_caching)
    parent = make_request(10, max_tokens=5)
    children = [
        make_request(0, 5, prompt=list(parent.prompt_token_ids), parent=parent) for _ in range(2)
    ]
    for request in (parent, *children):
        scheduler.add_request(request)
    output, _ = step(scheduler, model)
    assert [s.request for s in output.scheduled] == [parent]  # children wait for the prompt
    output, _ = step(scheduler, model)
    by_request = {s.request.request_id: s for s in output.scheduled}
    parent_blocks = scheduler.kv_cache.block_tables[parent.request_id][:2]
    assert [b.ref_cnt for b in parent_blocks] == [3, 3]
    for child in children:
        s = by_request[child.request_id]
        assert s.block_ids[:2] == [b.block_id for b in parent_blocks]
        assert (s.start_position, s.num_new_tokens, s.sample) == (8, 2, True)
        assert child.num_cached_tokens == 8
    run_all(scheduler, model)
    assert all(c.num_output_tokens == 5 for c in children)


def test_child_of_a_finished_parent_schedules_normally() -> None:
    scheduler, model = make_fake_engine(block_size=4)
    parent = make_request(10, max_tokens=1)
    scheduler.add_request(parent)
    step(scheduler, model)
    assert parent.status is RequestStatus.FINISHED_LENGTH
    child = make_request(0, 2, prompt=list(parent.prompt_token_ids), parent=parent)
    scheduler.add_request(child)
    output, _ = step(scheduler, model)
    assert output.scheduled[0].start_position == 8  # prefix-cache hit on the freed blocks


def test_prefix_cache_hits_show_in_stats_and_cached_tokens() -> None:
    scheduler, model = make_fake_engine(block_size=4)
    shared = [random.randrange(VOCAB) for _ in range(13)]
    first = make_request(0, 2, prompt=[*shared, 1, 2])
    scheduler.add_request(first)
    step(scheduler, model)
    second = make_request(0, 2, prompt=[*shared, 3])
    scheduler.add_request(second)
    output, _ = step(scheduler, model)
    s = next(s for s in output.scheduled if s.request is second)
    assert (s.start_position, s.num_new_tokens) == (12, 2)
    assert second.num_cached_tokens == 12
    stats = scheduler.stats()
    assert stats.prefix_cache_queries == 15 + 14 and stats.prefix_cache_hits == 12


def test_eos_and_max_model_len_finish_requests() -> None:
    scheduler, model = make_fake_engine(max_model_len=10)
    long = make_request(8, max_tokens=50)
    scheduler.add_request(long)
    prompt = [5, 6, 7]
    eos = (sum(prompt) * 31 + len(prompt) * 7) % VOCAB  # the fake model's first token
    stops = make_request(0, 50, prompt=prompt, eos=eos)
    scheduler.add_request(stops)
    _, finished = step(scheduler, model)
    assert finished == [stops] and stops.status is RequestStatus.FINISHED_STOPPED
    run_all(scheduler, model)
    assert long.status is RequestStatus.FINISHED_LENGTH and long.num_tokens == 10


def test_add_request_rejects_requests_that_can_never_run() -> None:
    scheduler = make_scheduler(num_blocks=4, block_size=4, max_model_len=20)
    with pytest.raises(ValueError, match="at least one token"):
        scheduler.add_request(make_request(0))
    with pytest.raises(ValueError, match="max_model_len"):
        scheduler.add_request(make_request(21))
    with pytest.raises(ValueError, match="KV blocks"):
        scheduler.add_request(make_request(12, max_tokens=8))
    request = make_request(4)
    scheduler.add_request(request)
    with pytest.raises(ValueError, match="already"):
        scheduler.add_request(request)


@pytest.mark.parametrize("tenants", ["", "abc"])
def test_random_workload_with_aborts_keeps_every_invariant(tenants: str) -> None:
    """With ``tenants``, requests of three tenants whose steps are shared at one row each
    (``fair_step_rows=1``): capped requests skip steps amid preemptions and aborts."""
    rng = random.Random(3)
    scheduler, model = make_fake_engine(
        num_blocks=16, block_size=4, budget=16, max_num_seqs=5, fair_step_rows=1
    )
    prefixes = [[rng.randrange(VOCAB) for _ in range(20)] for _ in range(3)]
    live: list[Request] = []
    for _ in range(300):
        if rng.random() < 0.5:
            prompt = [*rng.choice(prefixes)[: rng.randint(0, 20)], rng.randrange(VOCAB)]
            parent = rng.choice(live) if live and rng.random() < 0.2 else None
            if parent is not None and parent.parent is None:
                prompt = list(parent.prompt_token_ids)
            else:
                parent = None
            tenant: Hashable | None = rng.choice(tenants) if tenants else None
            if parent is not None:
                tenant = parent.tenant
            request = make_request(
                0,
                rng.randint(1, 12),
                prompt=prompt,
                parent=parent,
                priority=rng.randint(0, 2),
                tenant=tenant,
            )
            scheduler.add_request(request)
            live.append(request)
        if live and rng.random() < 0.05:
            scheduler.finish_requests([rng.choice(live).request_id], RequestStatus.FINISHED_ABORTED)
        step(scheduler, model)
        live = [r for r in live if not r.status.is_finished]
    run_all(scheduler, model)
    assert scheduler.num_preemptions > 0 and scheduler.stats().prefix_cache_hits > 0


def test_no_prefix_hit_on_blocks_computed_in_the_same_step() -> None:
    """Blocks are published only after the step that computes them, so a request admitted
    beside another with the same prefix computes it too instead of reading unwritten KV."""
    scheduler, model = make_fake_engine(block_size=4)
    prompt = [random.randrange(VOCAB) for _ in range(9)]
    first, twin = make_request(0, 3, prompt=list(prompt)), make_request(0, 3, prompt=list(prompt))
    scheduler.add_request(first)
    scheduler.add_request(twin)
    output, _ = step(scheduler, model)
    assert [(s.start_position, s.num_new_tokens) for s in output.scheduled] == [(0, 9), (0, 9)]
    assert twin.num_cached_tokens == 0
    late = make_request(0, 3, prompt=list(prompt))
    scheduler.add_request(late)
    output, _ = step(scheduler, model)
    assert late.num_cached_tokens == 8 and output.scheduled[-1].start_position == 8
    run_all(scheduler, model)


@pytest.mark.parametrize("num_blocks", [200, 14])
def test_speculative_drafts_keep_outputs_and_roll_back_their_blocks(num_blocks: int) -> None:
    """Drafts that are partly right, wrong, or run past ``max_tokens``: outputs equal a run
    without drafts (with preemption in the tight cache), blocks stay consistent each step,
    and fewer steps are needed."""
    random.seed(3)
    specs = [(random.randint(5, 30), random.randint(5, 20)) for _ in range(8)]
    prompts = [[random.randrange(VOCAB) for _ in range(n)] for n, _ in specs]

    def run(speculate: bool) -> tuple[Scheduler, list[Request], int]:
        scheduler, model = make_fake_engine(num_blocks=num_blocks, budget=40)
        requests = [
            make_request(0, max_tokens, prompt=list(prompt))
            for prompt, (_, max_tokens) in zip(prompts, specs, strict=True)
        ]
        for request in requests:
            scheduler.add_request(request)
        rng = random.Random(4)
        num_steps = 0
        while scheduler.has_unfinished_requests():
            if speculate:
                for request in scheduler.running:
                    context = list(request.token_ids)
                    for _ in range(rng.randint(0, 4)):
                        context.append(model.next_token(context))
                    if rng.random() < 0.5:
                        context.append((model.next_token(context) + 1) % VOCAB)
                    request.draft_token_ids = context[request.num_tokens :]
            step(scheduler, model)
            num_steps += 1
        assert scheduler.kv_cache.block_tables == {}
        return scheduler, requests, num_steps

    _, reference, plain_steps = run(speculate=False)
    scheduler, speculated, spec_steps = run(speculate=True)
    for ref, req in zip(reference, speculated, strict=True):
        assert req.token_ids == ref.token_ids
        assert req.status is RequestStatus.FINISHED_LENGTH
    assert spec_steps < plain_steps
    if num_blocks == 14:
        assert scheduler.num_preemptions > 0
