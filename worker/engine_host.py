"""One engine per worker process, stepped by one thread, fed by every shard task at once.

    shard task A ─┐ submit()                 ┌─► sink A (queue of the task's results)
    shard task B ─┼──► submissions ─► engine thread: admit → check stops → step ─┤
    shard task C ─┘   (bounded: submit()   (requests of A, B, C share each step) └─► sink C
                       waits for room)

Tasks run in Celery's thread pool; only the engine thread touches the engine (and its
tokenizer's chat template), so the engine needs no locks. Its parts: the bounded inbox
(:mod:`worker.submission_queue`), the stop watcher's thread (:mod:`worker.stop_watcher`),
the isolation of a failed step's culprit (:mod:`worker.step_isolation`) and the tenants'
turns in the engine's waiting queue (:mod:`worker.fair_order`); what goes in and comes out
is typed in :mod:`worker.host_records`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.llm_engine import LLMEngine
from engine.lora_adapter import LoRAAdapterError
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from worker.engine_load import EngineLoad, QueueDepth, watch_queue
from worker.fair_order import FairOrder
from worker.host_records import (
    ChatPrompt,
    Failed,
    Finished,
    HostResult,
    Interrupted,
    PromptInput,
    Refused,
    StopChecker,
    Stopped,
    Submission,
    Withdrawal,
)
from worker.step_isolation import StepIsolation
from worker.stop_watcher import StopWatcher
from worker.submission_queue import SubmissionQueue

log = logging.getLogger(__name__)


@dataclass(slots=True)
class HostStats:
    """What the host adds to the engine's own statistics."""

    num_submitted: int = 0
    num_resolved: int = 0
    num_steps: int = 0
    num_multi_batch_steps: int = 0  # steps whose requests came from two or more batches
    max_batches_in_step: int = 0
    num_batches_served: int = 0
    num_failed_steps: int = 0
    num_culprits: int = 0  # requests that failed a step on their own
    recent_batches: deque[str] = field(default_factory=lambda: deque(maxlen=4096))


class EngineHost:
    def __init__(
        self,
        engine_factory: Callable[[], LLMEngine],
        *,
        stop_checker: StopChecker,
        queue_depth: QueueDepth | None = None,
        max_pending: int = 512,
        stop_poll_s: float = 0.5,
        fair_order: bool = True,
    ) -> None:
        self._factory = engine_factory
        self._queue_depth = queue_depth
        self._stop_poll_s = stop_poll_s
        self._closing = threading.Event()
        self._inbox = SubmissionQueue(max_pending, self._closing)
        self._stops = StopWatcher(stop_checker, stop_poll_s, self._closing)
        self._isolation = StepIsolation()
        self._order = FairOrder() if fair_order else None  # engine thread only
        self._lock = threading.Lock()  # guards stats and _throughput
        self._stats = HostStats()
        self._throughput: deque[tuple[float, int]] = deque(maxlen=64)
        self._inflight: dict[Hashable, Submission] = {}
        self._engine: LLMEngine | None = None
        self._load: EngineLoad | None = None
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine-host", daemon=True)
        self._queue_watcher: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout_s: float | None = None) -> None:
        """Start the engine thread and wait until the engine is loaded."""
        self._thread.start()
        self._stops.start()
        self._ready.wait(timeout_s)
        if self._load_error is not None:
            raise RuntimeError("the engine failed to load") from self._load_error
        if self._queue_depth is not None and self._load is not None:
            args = (self._load, self._queue_depth, self._closing)
            self._queue_watcher = threading.Thread(
                target=watch_queue, args=args, name="engine-host-queue", daemon=True
            )
            self._queue_watcher.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the engine: every request in it is answered ``interrupted`` (its shard is
        handed back), and what is submitted from now on is never run."""
        self._closing.set()
        self._inbox.wake()  # a shard waiting for room sees the host closing
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._stops.join(timeout_s)
        if self._queue_watcher is not None and self._queue_watcher.is_alive():
            self._queue_watcher.join(timeout_s)

    @property
    def engine(self) -> LLMEngine:
        assert self._engine is not None, "the engine host is not started"
        return self._engine

    @property
    def load(self) -> EngineLoad:
        assert self._load is not None, "the engine host is not started"
        return self._load

    # -- what shard tasks call ---------------------------------------------------------------
    @property
    def closing(self) -> bool:
        """Whether the host is stopping: a shard waiting on it must hand its work back."""
        return self._closing.is_set()

    def submit(self, submission: Submission) -> None:
        """Queue a request for the engine; blocks while ``max_pending`` requests are pending.

        Once the host is closing, nothing is queued: the caller sees ``closing``.
        """
        if not self._inbox.put(submission):
            return
        with self._lock:
            self._stats.num_submitted += 1

    def withdraw(self, request_ids: set[Hashable]) -> None:
        """Abort these submissions, answered or not; each gets a ``Stopped`` result if it
        was still in flight (its sink may be gone: the shard stopped listening)."""
        self._inbox.put_withdrawal(Withdrawal(frozenset(request_ids)))

    def watch(self, batch_id: str) -> None:
        """Check this batch for a stop from now on, even before it has requests in flight."""
        self._stops.watch(batch_id)
        with self._lock:
            if batch_id not in self._stats.recent_batches:
                self._stats.recent_batches.append(batch_id)
                self._stats.num_batches_served += 1

    def unwatch(self, batch_id: str) -> None:
        self._stops.unwatch(batch_id)

    def stop_reason(self, batch_id: str) -> str | None:
        """The batch's stop reason as of the last check (at most ``stop_poll_s`` old)."""
        return self._stops.stop_reason(batch_id)

    def snapshot(self) -> dict[str, Any]:
        """Host and engine statistics as plain values (safe from any thread)."""
        engine_stats = self._engine.stats.as_dict() if self._engine is not None else {}
        engine_stats.pop("last_step", None)
        with self._lock:
            s = self._stats
            points = list(self._throughput)
            data: dict[str, Any] = {
                "num_submitted": s.num_submitted,
                "num_resolved": s.num_resolved,
                "num_host_steps": s.num_steps,
                "num_multi_batch_steps": s.num_multi_batch_steps,
                "max_batches_in_step": s.max_batches_in_step,
                "num_batches_served": s.num_batches_served,
                "num_failed_steps": s.num_failed_steps,
                "num_culprits": s.num_culprits,
                "num_pending": self._inbox.num_pending,
            }
        rate = 0.0
        if len(points) >= 2 and points[-1][0] > points[0][0]:
            rate = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
        total_blocks = engine_stats.get("num_kv_blocks_total") or 0
        used = engine_stats.get("num_kv_blocks_used", 0)
        data.update(
            engine_stats,
            **(self._load.snapshot() if self._load is not None else {}),
            generated_tokens_per_s=rate,
            kv_cache_usage=used / total_blocks if total_blocks else 0.0,
        )
        return data

    # -- the engine thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._engine = self._factory()
            self._load = EngineLoad(self._engine.config.max_num_seqs)
        except BaseException as exc:
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        engine, load = self._engine, self._load
        while not self._closing.is_set():
            if not self._isolation.active:
                if not engine.has_unfinished_requests():
                    load.idle_began()
                self._admit(block=not engine.has_unfinished_requests())
            elif not engine.has_unfinished_requests():
                for submission in self._isolation.next_group():
                    self._add(submission)
            self._check_stops()
            if engine.has_unfinished_requests():
                load.idle_ended()
                self._step(engine)
        self._inflight.update((s.request_id, s) for s in self._isolation.drain())
        for request_id in list(self._inflight):
            engine.abort_request(request_id)
            self._resolve(Interrupted(request_id))

    def _admit(self, block: bool) -> None:
        for item in self._inbox.take(self._stop_poll_s if block else None):
            if isinstance(item, Withdrawal):
                self._abort(item.request_ids & self._inflight.keys(), "withdrawn")
            else:
                self._add(item)

    def _add(self, submission: Submission) -> None:
        engine = self.engine
        request_id = submission.request_id
        assert request_id not in self._inflight, "request ids are unique in flight"
        self._inflight[request_id] = submission
        stopped = self._stops.stop_reason(submission.batch_id)
        if stopped is not None:
            self._resolve(Stopped(request_id, stopped))
            return
        try:
            prompt = self._render(submission.prompt)
            params = submission.params
            tag = None
            if self._order is not None:
                cost = params.n if isinstance(params, SamplingParams) else 1
                tag = self._order.admit(request_id, submission.tenant, cost)
            engine.add_request(
                request_id,
                prompt,
                params,
                submission.priority,
                lora_request=submission.lora_request,
                arrival_time=tag,
                tenant=submission.tenant,
            )
        except LoRAAdapterError as exc:  # every line of that adapter is refused alike
            adapter = submission.lora_request.name if submission.lora_request else "?"
            self._resolve(Refused(request_id, f"LoRA adapter {adapter!r} cannot run: {exc}"))
        except ValueError as exc:
            self._resolve(Refused(request_id, str(exc)))
        except Exception as exc:
            # Anything else is an engine bug: it fails this request alone, and the engine
            # thread (every other shard's requests) must carry on.
            log.exception("admitting %s failed", request_id)
            engine.abort_request(request_id)
            self._resolve(Failed(request_id, f"engine failure: {exc}"))

    def _render(self, prompt: PromptInput) -> str | list[int]:
        """A chat prompt through the model's chat template; text and token ids as they are
        (the engine tokenizes text and checks both)."""
        if not isinstance(prompt, ChatPrompt):
            return prompt
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise ValueError("this model has no tokenizer: send token ids, not text")
        return tokenizer.apply_chat_template(prompt.messages)

    def _check_stops(self) -> None:
        """Abort the requests of batches the watcher found stopped (engine thread only)."""
        stops = self._stops.fresh_stops()
        if stops is None:
            return
        for request_id, submission in list(self._inflight.items()):
            reason = stops.get(submission.batch_id)
            if reason is not None:
                self._abort({request_id}, reason)

    def _abort(self, request_ids: Iterable[Hashable], reason: str) -> None:
        for request_id in request_ids:
            output = self.engine.abort_request(request_id)
            self._resolve(Stopped(request_id, reason, output))

    def _step(self, engine: LLMEngine) -> None:
        started = time.monotonic()
        try:
            outputs = engine.step()
        except Exception as exc:
            self._isolate(engine, exc)
            return
        ran = engine.running_request_ids() | {o.request_id for o in outputs}
        self.load.step(started, time.monotonic(), len(ran))
        self._record_step({self._inflight[r].batch_id for r in ran if r in self._inflight})
        for output in outputs:
            if isinstance(output, RequestOutput) and output.error is not None:
                self._resolve(Failed(output.request_id, output.error))
            else:
                self._resolve(Finished(output.request_id, output))

    def _isolate(self, engine: LLMEngine, exc: Exception) -> None:
        """A step failed: abort everything in flight and rerun it in halves."""
        suspects = list(self._inflight.values())
        with self._lock:
            self._stats.num_failed_steps += 1
        for submission in suspects:
            engine.abort_request(submission.request_id)
            if self._order is not None:  # re-added later with a fresh tag
                self._order.done(submission.request_id)
        culprit = self._isolation.failed(suspects)
        if culprit is not None:
            log.error("engine step failed on %s alone: %s", culprit.request_id, exc)
            with self._lock:
                self._stats.num_culprits += 1
            self._resolve(Failed(culprit.request_id, f"engine failure: {exc}"))
            return
        log.exception("engine step failed with %d requests; isolating them", len(suspects))
        self._inflight.clear()  # they stay pending: each is answered once its group reruns

    def _record_step(self, batches: set[str]) -> None:
        generated = self.engine.stats.num_generated_tokens
        with self._lock:
            s = self._stats
            s.num_steps += 1
            s.num_multi_batch_steps += int(len(batches) >= 2)
            s.max_batches_in_step = max(s.max_batches_in_step, len(batches))
            self._throughput.append((time.monotonic(), generated))

    def _resolve(self, result: HostResult) -> None:
        submission = self._inflight.pop(result.request_id)
        if self._order is not None:
            self._order.done(result.request_id)
        with self._lock:
            self._stats.num_resolved += 1
        self._inbox.release()
        try:
            submission.sink(result)
        except Exception:
            log.exception("a result sink failed for %s", result.request_id)
