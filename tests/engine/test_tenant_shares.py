"""Tenants' shares of a step (``EngineConfig.fair_step_rows``): while several tenants have
requests in the engine, no tenant runs more rows in one step than the next-busiest has."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable
from pathlib import Path

import pytest

from engine import SamplingParams
from engine.config import EngineConfig, EngineConfigError
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.request import Request, RequestId
from engine.scheduler import Scheduler
from tests.engine.test_scheduler import VOCAB, FakeModel, run_all, step


def tenant_request(tenant: Hashable | None, serial: int, max_tokens: int = 6) -> Request:
    rng = random.Random(serial)
    return Request(
        request_id=RequestId(f"{tenant}-{serial}"),
        prompt_token_ids=[rng.randrange(VOCAB) for _ in range(5)],
        sampling_params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        tenant=tenant,
    )


def scheduler_with(fair_step_rows: int | None, num_blocks: int = 256) -> Scheduler:
    config = EngineConfig(
        model="fake",
        device="cpu",
        block_size=4,
        max_num_batched_tokens=512,
        max_num_seqs=64,
        fair_step_rows=fair_step_rows,
    )
    return Scheduler(config, num_kv_blocks=num_blocks, max_model_len=256)


def rows_per_tenant(scheduler: Scheduler) -> list[Counter[Hashable | None]]:
    """Step to the end; each step's scheduled requests counted by tenant."""
    return [Counter(s.request.tenant for s in out.scheduled) for out in run_all(scheduler)]


def test_a_busy_tenant_runs_as_many_rows_as_the_next_busiest_while_it_is_there() -> None:
    scheduler = scheduler_with(fair_step_rows=2)
    for i in range(12):
        scheduler.add_request(tenant_request("a", i, max_tokens=8))
    model = FakeModel(scheduler)
    output, _ = step(scheduler, model)  # alone: every one of A's runs
    assert Counter(s.request.tenant for s in output.scheduled) == {"a": 12}
    for i in range(3):
        scheduler.add_request(tenant_request("b", i, max_tokens=3))
    shared = []
    while any(r.tenant == "b" for r in scheduler.requests.values()):
        output, _ = step(scheduler, model)
        shared.append(Counter(s.request.tenant for s in output.scheduled))
    assert shared and all(rows == {"a": 3, "b": 3} for rows in shared), shared
    output, _ = step(scheduler, model)  # B is done: A runs every row again
    assert Counter(s.request.tenant for s in output.scheduled) == {"a": 12}
    run_all(scheduler, model)


def test_the_floor_keeps_a_busy_tenant_from_being_cut_below_it() -> None:
    scheduler = scheduler_with(fair_step_rows=5)
    for i in range(12):
        scheduler.add_request(tenant_request("a", i))
    scheduler.add_request(tenant_request("b", 0))
    scheduler.add_request(tenant_request(None, 0))  # no tenant named: one tenant of its own
    first = rows_per_tenant(scheduler)[0]
    assert first == {"a": 5, "b": 1, None: 1}


@pytest.mark.parametrize("fair_step_rows", [0, 5])
def test_off_or_one_tenant_caps_nothing(fair_step_rows: int) -> None:
    scheduler = scheduler_with(fair_step_rows)
    for i in range(12):
        scheduler.add_request(tenant_request("a", i))
    if fair_step_rows == 0:
        scheduler.add_request(tenant_request("b", 0))
    rows = rows_per_tenant(scheduler)[0]
    assert sum(rows.values()) == (13 if fair_step_rows == 0 else 12)


def test_capped_steps_give_the_same_tokens_as_uncapped_ones() -> None:
    """The cap only changes which step a token is computed in, never the token."""
    outputs = {}
    for rows in (0, 1):
        scheduler = scheduler_with(rows)
        requests = [tenant_request(min(i // 12, 2), i, max_tokens=1 + i % 7) for i in range(20)]
        for request in requests:
            scheduler.add_request(request)
        steps = run_all(scheduler)
        outputs[rows] = ([r.output_token_ids for r in requests], len(steps))
    assert outputs[0][0] == outputs[1][0]
    assert outputs[1][1] > outputs[0][1]  # the cap did hold rows back


def test_the_default_is_on_for_the_cpu_only_and_negative_is_refused() -> None:
    assert EngineConfig(model="m", device="cpu").step_row_floor == 8
    assert EngineConfig(model="m", device="cuda").step_row_floor == 0
    assert EngineConfig(model="m", device="cuda", fair_step_rows=4).step_row_floor == 4
    with pytest.raises(EngineConfigError, match="fair_step_rows"):
        EngineConfig(model="m", fair_step_rows=-1)


def test_the_engine_hands_each_request_its_tenant(tiny_model_dirs: dict[str, Path]) -> None:
    config = EngineConfig(model=str(tiny_model_dirs["llama"]), device="cpu", fair_step_rows=1)
    engine = LLMEngine(config)
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True, n=2)
    engine.add_request("a0", [5, 6, 7], params, tenant="a")
    engine.add_request("a1", [5, 6, 8], params, tenant="a")
    engine.add_request("b0", [5, 6, 9], params, tenant="b")
    tenants = Counter(r.tenant for r in engine.scheduler.requests.values())
    assert tenants == {"a": 4, "b": 2}
    finished: dict[Hashable, int] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            assert isinstance(output, RequestOutput) and output.finished
            finished[output.request_id] = output.num_output_tokens
    assert finished == {"a0": 6, "a1": 6, "b0": 6}
