"""The engine host with a tiny random model: shared steps, backpressure, stops, refusals."""

from __future__ import annotations

import queue
import threading
from collections.abc import Hashable, Iterator
from pathlib import Path

import pytest

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from worker.engine_host import EngineHost
from worker.host_records import Finished, HostResult, Refused, Stopped, Submission


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["llama"]


def make_host(model_dir: Path, stops: dict[str, str], max_pending: int = 64) -> EngineHost:
    config = EngineConfig(model=str(model_dir), max_num_seqs=64)
    return EngineHost(
        lambda: LLMEngine(config),
        stop_checker=lambda batches: {b: r for b, r in stops.items() if b in batches},
        max_pending=max_pending,
        stop_poll_s=0.05,
    )


@pytest.fixture
def host(model_dir: Path) -> Iterator[EngineHost]:
    host = make_host(model_dir, {})
    host.start(timeout_s=60)
    yield host
    host.close()


def prompt(i: int) -> list[int]:
    return [(7 * i + j) % 500 + 3 for j in range(5 + i % 4)]


def run_batch(host: EngineHost, batch: str, n: int, max_tokens: int) -> list[HostResult]:
    results: queue.SimpleQueue[HostResult] = queue.SimpleQueue()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    host.watch(batch)
    for i in range(n):
        host.submit(Submission((batch, i), batch, prompt(i), params, results.put))
    collected = [results.get(timeout=60) for _ in range(n)]
    host.unwatch(batch)
    return sorted(collected, key=lambda r: r.request_id[1])  # type: ignore[index]


def test_batches_from_threads_share_steps_and_match_offline(
    host: EngineHost, model_dir: Path
) -> None:
    outcome: dict[str, list[HostResult]] = {}
    threads = [
        threading.Thread(target=lambda b=b: outcome.update({b: run_batch(host, b, 6, 12)}))
        for b in ("batch_a", "batch_b", "batch_c")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    expected = LLM(model=str(model_dir), max_num_seqs=64).generate(
        [prompt(i) for i in range(6)],
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
        use_tqdm=False,
    )
    for results in outcome.values():
        assert [
            r.output.outputs[0].token_ids
            for r in results
            if isinstance(r, Finished) and isinstance(r.output, RequestOutput)
        ] == [e.outputs[0].token_ids for e in expected]
    stats = host.snapshot()
    assert stats["num_multi_batch_steps"] >= 1 and stats["max_batches_in_step"] >= 2
    assert stats["num_batches_served"] == 3 and stats["num_pending"] == 0


def test_refusal_is_a_result_not_a_crash(host: EngineHost) -> None:
    results: queue.SimpleQueue[HostResult] = queue.SimpleQueue()
    too_long = list(range(3, 1100))
    host.submit(Submission("b/0/0", "b", too_long, SamplingParams(max_tokens=4), results.put))
    host.submit(Submission("b/0/1", "b", "text", SamplingParams(max_tokens=4), results.put))
    refused = [results.get(timeout=30) for _ in range(2)]
    assert all(isinstance(r, Refused) and r.message for r in refused)
    assert isinstance(run_batch(host, "b", 1, 2)[0], Finished), "the host keeps serving"


def test_default_max_tokens_fills_the_context(host: EngineHost) -> None:
    results: queue.SimpleQueue[HostResult] = queue.SimpleQueue()
    params = SamplingParams(temperature=0, max_tokens=None, ignore_eos=True)
    host.submit(Submission("d/0/0", "d", [3 + i % 500 for i in range(997)], params, results.put))
    result = results.get(timeout=120)
    assert isinstance(result, Finished), result
    output = result.output
    assert isinstance(output, RequestOutput), result
    assert len(output.prompt_token_ids) + len(output.outputs[0].token_ids) == 1024


def test_stop_aborts_a_batch_between_steps(model_dir: Path) -> None:
    stops: dict[str, str] = {}
    host = make_host(model_dir, stops, max_pending=4)
    host.start(timeout_s=60)
    try:
        results: queue.SimpleQueue[HostResult] = queue.SimpleQueue()
        params = SamplingParams(temperature=0, max_tokens=900, ignore_eos=True)
        host.watch("s")
        for i in range(4):
            host.submit(Submission(f"s/0/{i}", "s", prompt(i), params, results.put))
        stops["s"] = "cancelled"
        stopped = [results.get(timeout=30) for _ in range(4)]
        assert all(isinstance(r, Stopped) and r.reason == "cancelled" for r in stopped)
        assert host.stop_reason("s") == "cancelled"
        host.submit(Submission("s/0/9", "s", prompt(9), params, results.put))
        late = results.get(timeout=30)
        assert isinstance(late, Stopped) and late.reason == "cancelled", "it takes no more"
    finally:
        host.close()


def test_withdrawn_requests_leave_the_engine_and_their_ids_can_run_again(
    host: EngineHost,
) -> None:
    """A shard that fails mid-run withdraws what it submitted; its rerun reuses the ids."""
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
    abandoned: queue.SimpleQueue[HostResult] = queue.SimpleQueue()
    ids: set[Hashable] = {("w", i) for i in range(4)}
    for request_id in sorted(ids, key=str):
        host.submit(Submission(request_id, "w", prompt(1), params, abandoned.put))
    host.withdraw(ids)
    gone = [abandoned.get(timeout=60) for _ in ids]
    assert {r.request_id for r in gone} == ids
    assert all(isinstance(r, Stopped) and r.reason == "withdrawn" for r in gone)
    assert all(
        not isinstance(r, Stopped) or r.output is None or len(r.output.outputs[0].token_ids) < 200
        for r in gone
    )

    rerun = run_batch(host, "w", 4, max_tokens=3)  # the same ids: ("w", 0) .. ("w", 3)
    assert [r.request_id for r in rerun] == [("w", i) for i in range(4)]
    assert all(isinstance(r, Finished) for r in rerun)
    assert host.snapshot()["num_pending"] == 0


@pytest.mark.parametrize("fair", [True, False])
def test_a_later_tenant_goes_ahead_of_an_earlier_tenants_waiting_lines(
    model_dir: Path, fair: bool
) -> None:
    # Two sequences per step; tenant A's six requests and then B's two are all in the inbox
    # when the engine thread first takes it (submitted before start), so the order is exact.
    config = EngineConfig(model=str(model_dir), max_num_seqs=2)
    host = EngineHost(lambda: LLMEngine(config), stop_checker=lambda b: {}, fair_order=fair)
    results: queue.SimpleQueue[HostResult] = queue.SimpleQueue()
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    for tenant, n in (("a", 6), ("b", 2)):
        for i in range(n):
            key = (tenant, i)
            host.submit(Submission(key, tenant, prompt(i), params, results.put, tenant=tenant))
    host.start(timeout_s=60)
    try:
        order = [results.get(timeout=60).request_id for _ in range(8)]
    finally:
        host.close()
    if fair:  # tags A 0..5, B 0..1 (B joins at the clock): steps run (A0, B0), (A1, B1), A2..
        assert set(order[:4]) == {("a", 0), ("b", 0), ("a", 1), ("b", 1)}
        assert order[4:] == [("a", i) for i in range(2, 6)]
    else:  # in arrival order B runs last
        assert set(order[6:]) == {("b", 0), ("b", 1)}
