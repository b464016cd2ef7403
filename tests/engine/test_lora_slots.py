"""The adapter slot table (reuse, LRU eviction of idle slots only, waiting when all are
busy), the scheduler holding a request back for a slot, and per-adapter block hashes."""

from __future__ import annotations

from engine.block_hash import extend_block_hashes
from engine.config import EngineConfig
from engine.lora_request import LoRARequest
from engine.lora_slots import LoRASlotTable
from engine.request import Request, RequestId, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler


def test_same_adapter_shares_its_slot_and_loads_once() -> None:
    table = LoRASlotTable(2)
    assert table.acquire(7) == table.acquire(7) == 0
    assert table.take_pending() == [(0, 7)] and table.users == [2, 0]
    table.release(0)
    table.release(0)
    assert table.acquire(7) == 0 and table.take_pending() == [], "an idle slot keeps its adapter"


def test_busy_slots_are_never_evicted_and_idle_ones_go_lru() -> None:
    table = LoRASlotTable(2)
    a, b = table.acquire(1), table.acquire(2)
    assert a == 0 and b == 1
    assert table.acquire(3) is None, "both slots busy: the request waits"
    table.release(b)
    table.release(a)  # slot 0 is now the most recently used
    assert table.acquire(3) == b, "the least recently used idle slot is evicted"
    assert table.acquire(1) == a, "adapter 1 still sat in its idle slot"
    assert table.acquire(2) is None
    assert table.take_pending() == [(0, 1), (1, 2), (1, 3)]
    assert table.num_evictions == 1 and table.adapter_of == [1, 3]


def _request(name: str, lora: LoRARequest | None, prompt: list[int]) -> Request:
    return Request(
        RequestId(name),
        prompt,
        SamplingParams(max_tokens=2, ignore_eos=True),
        lora_request=lora,
    )


def test_scheduler_holds_back_a_request_until_a_slot_frees() -> None:
    """One slot: the second adapter's request waits (the base request behind it runs), then
    runs once the first adapter's request finishes and its idle slot is evicted."""
    config = EngineConfig(model="fake", block_size=4, enable_lora=True, max_loras=1)
    scheduler = Scheduler(config, num_kv_blocks=32, max_model_len=64)
    first, second = LoRARequest("a", 1, "/a"), LoRARequest("b", 2, "/b")
    r1, r2, r3 = (
        _request("r1", first, [5, 6, 7]),
        _request("r2", second, [5, 6, 7]),
        _request("r3", None, [8, 9]),
    )
    for r in (r1, r2, r3):
        scheduler.add_request(r)
    plan = scheduler.schedule()
    assert [s.request for s in plan.scheduled] == [r1, r3]
    assert r2.status is RequestStatus.WAITING and r2.lora_slot == -1 and r1.lora_slot == 0
    assert scheduler.lora_slots is not None
    assert scheduler.lora_slots.take_pending() == [(0, 1)]
    scheduler.finish_requests([r1.request_id], RequestStatus.FINISHED_ABORTED)
    assert r1.lora_slot == -1
    scheduler.update_from_output(plan, [[1], [1]])
    plan = scheduler.schedule()
    assert r2 in [s.request for s in plan.scheduled] and r2.lora_slot == 0
    assert scheduler.lora_slots.take_pending() == [(0, 2)]


def test_block_hashes_differ_per_adapter() -> None:
    prompt = list(range(8))
    keys = [
        _request(name, lora, prompt).block_hash_keys
        for name, lora in (("x", None), ("y", LoRARequest("a", 1, "/a")))
    ]
    hashes = []
    for extra in keys:
        out: list[int] = []
        extend_block_hashes(out, prompt, 4, extra)
        hashes.append(out)
    assert len(hashes[0]) == 2 and not set(hashes[0]) & set(hashes[1])
    base_only: list[int] = []
    extend_block_hashes(base_only, prompt, 4)
    assert base_only == hashes[0], "base-model keys are unchanged by LoRA support"


def test_can_acquire_changes_nothing() -> None:
    table = LoRASlotTable(1)
    assert table.can_acquire(1) and table.acquire(1) == 0
    assert table.can_acquire(1) and not table.can_acquire(2)
    assert table.users == [1] and table.take_pending() == [(0, 1)]
