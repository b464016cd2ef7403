"""One engine per worker process, stepped by one thread, fed by every shard task at once.

    shard task A ─┐ submit()                 ┌─► sink A (queue of the task's results)
    shard task B ─┼──► submissions ─► engine thread: admit → check stops → step ─┤
    shard task C ─┘   (bounded: submit()   (requests of A, B, C share each step) └─► sink C
                       waits for room)

Tasks run in Celery's thread pool; only the engine thread touches the engine (and its
tokenizer's chat template), so the engine needs no locks. A second thread asks
``stop_checker`` every ``stop_poll_s`` whether any batch being served must stop (cancelled,
expired); the engine thread aborts that batch's requests between two steps. The check
reads Redis, so it has a thread of its own: while Redis is slow or restarting, the engine
keeps stepping.

A step that raises (an engine bug some request triggers) must not fail every request in
flight. The host aborts them all and reruns them in isolation, halving the group at each
failure: a group that fails alone splits in two, a request that fails alone is the culprit
and gets the error, and every other request is rerun from its prompt and answered as if
nothing happened (greedy and seeded sampling give the same tokens). New submissions wait
until the suspects are cleared; finding one culprit among k requests takes about log2(k)
failed steps.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from engine.llm_engine import LLMEngine
from engine.outputs import PoolingRequestOutput, RequestOutput
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParams
from worker.engine_load import EngineLoad, QueueDepth, watch_queue

log = logging.getLogger(__name__)

StopChecker = Callable[[set[str]], dict[str, str]]


@dataclass(slots=True)
class ChatPrompt:
    """Messages to render with the model's chat template (in the engine thread)."""

    messages: list[dict[str, Any]]


PromptInput = str | list[int] | ChatPrompt


@dataclass(slots=True)
class HostResult:
    """How a submission ended: an engine output, a refusal, a stop, or an engine failure."""

    request_id: str
    output: RequestOutput | PoolingRequestOutput | None = None
    refused: str | None = None  # the engine can never run it (a 400 for the caller)
    stopped: str | None = None  # the batch's stop reason
    failed: str | None = None  # the engine broke while running it
    interrupted: bool = False  # the worker is shutting down: run it again elsewhere


@dataclass(slots=True)
class Submission:
    request_id: str
    batch_id: str
    prompt: PromptInput
    params: SamplingParams | PoolingParams  # pooling: an embedding, in the same steps
    sink: Callable[[HostResult], None]
    priority: int = 0
    fill_context: bool = False  # max_tokens becomes the rest of the model's context


@dataclass(slots=True)
class Withdrawal:
    """Requests whose shard gave up on them (it failed mid-run): abort them if in flight.

    It travels through the submission queue behind the shard's own submissions, so when the
    engine thread reaches it each of them is in flight or already answered, and a rerun of
    the shard (whose submissions come later) can reuse the same request ids.
    """

    request_ids: frozenset[str]


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
    ) -> None:
        assert max_pending >= 1
        self._factory = engine_factory
        self._stop_checker = stop_checker
        self._queue_depth = queue_depth
        self._max_pending = max_pending
        self._stop_poll_s = stop_poll_s
        self._submissions: queue.SimpleQueue[Submission | Withdrawal] = queue.SimpleQueue()
        self._room = threading.Condition()
        self._num_pending = 0
        self._lock = threading.Lock()  # guards stats, _watched and _stopped
        self._watched: Counter[str] = Counter()
        self._stopped: dict[str, str] = {}
        self._stats = HostStats()
        self._throughput: deque[tuple[float, int]] = deque(maxlen=64)
        self._inflight: dict[str, Submission] = {}
        self._suspects: deque[list[Submission]] = deque()  # groups rerun one at a time
        self._engine: LLMEngine | None = None
        self._load: EngineLoad | None = None
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._load_error: BaseException | None = None
        self._stops_version = 0  # bumped (under _lock) whenever _stopped gains a batch
        self._stops_seen = 0  # the version the engine thread last applied
        self._thread = threading.Thread(target=self._run, name="engine-host", daemon=True)
        self._stop_watcher = threading.Thread(
            target=self._watch_stops, name="engine-host-stops", daemon=True
        )
        self._queue_watcher: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout_s: float | None = None) -> None:
        """Start the engine thread and wait until the engine is loaded."""
        self._thread.start()
        self._stop_watcher.start()
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
        with self._room:
            self._room.notify_all()  # a shard waiting for room sees the host closing
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        for watcher in (self._stop_watcher, self._queue_watcher):
            if watcher is not None and watcher.is_alive():
                watcher.join(timeout_s)

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
        with self._room:
            self._room.wait_for(
                lambda: self._num_pending < self._max_pending or self._closing.is_set()
            )
            if self._closing.is_set():
                return
            self._num_pending += 1
        with self._lock:
            self._stats.num_submitted += 1
        self._submissions.put(submission)

    def withdraw(self, request_ids: set[str]) -> None:
        """Abort these submissions, answered or not; each gets a ``stopped`` result if it
        was still in flight (its sink may be gone: the shard stopped listening)."""
        self._submissions.put(Withdrawal(frozenset(request_ids)))

    def watch(self, batch_id: str) -> None:
        """Check this batch for a stop from now on, even before it has requests in flight."""
        with self._lock:
            self._watched[batch_id] += 1
            if batch_id not in self._stats.recent_batches:
                self._stats.recent_batches.append(batch_id)
                self._stats.num_batches_served += 1

    def unwatch(self, batch_id: str) -> None:
        with self._lock:
            self._watched[batch_id] -= 1
            if self._watched[batch_id] <= 0:
                del self._watched[batch_id]
                self._stopped.pop(batch_id, None)

    def stop_reason(self, batch_id: str) -> str | None:
        """The batch's stop reason as of the last check (at most ``stop_poll_s`` old)."""
        with self._lock:
            return self._stopped.get(batch_id)

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
                "num_pending": self._num_pending,
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
            if not self._suspects:
                if not engine.has_unfinished_requests():
                    load.idle_began()
                self._admit(block=not engine.has_unfinished_requests())
            elif not engine.has_unfinished_requests():
                for submission in self._suspects.popleft():
                    self._add(submission)
            self._check_stops()
            if engine.has_unfinished_requests():
                load.idle_ended()
                self._step(engine)
        for group in self._suspects:
            self._inflight.update((s.request_id, s) for s in group)
        for request_id in list(self._inflight):
            engine.abort_request(request_id)
            self._resolve(HostResult(request_id, interrupted=True))

    def _admit(self, block: bool) -> None:
        try:
            first = self._submissions.get(timeout=self._stop_poll_s) if block else None
        except queue.Empty:
            return
        batch = [first] if first is not None else []
        while True:
            try:
                batch.append(self._submissions.get_nowait())
            except queue.Empty:
                break
        for item in batch:
            if isinstance(item, Withdrawal):
                self._abort(item.request_ids & self._inflight.keys(), "withdrawn")
            else:
                self._add(item)

    def _add(self, submission: Submission) -> None:
        engine = self.engine
        assert submission.request_id not in self._inflight, "request ids are unique in flight"
        self._inflight[submission.request_id] = submission
        with self._lock:
            stopped = self._stopped.get(submission.batch_id)
        if stopped is not None:
            self._resolve(HostResult(submission.request_id, stopped=stopped))
            return
        try:
            prompt = self._prompt_ids(submission.prompt)
            params = submission.params
            if submission.fill_context and isinstance(params, SamplingParams):
                params = replace(params, max_tokens=max(1, engine.max_model_len - len(prompt)))
            engine.add_request(submission.request_id, prompt, params, submission.priority)
        except ValueError as exc:
            self._resolve(HostResult(submission.request_id, refused=str(exc)))
        except Exception as exc:
            # Anything else is an engine bug: it fails this request alone, and the engine
            # thread (every other shard's requests) must carry on.
            log.exception("admitting %s failed", submission.request_id)
            engine.abort_request(submission.request_id)
            self._resolve(HostResult(submission.request_id, failed=f"engine failure: {exc}"))

    def _prompt_ids(self, prompt: PromptInput) -> list[int]:
        """Token ids of a prompt; raises ValueError (a refusal) when it cannot be tokenized."""
        if isinstance(prompt, list):
            return prompt
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise ValueError("this model has no tokenizer: send token ids, not text")
        if isinstance(prompt, ChatPrompt):
            return tokenizer.apply_chat_template(prompt.messages)
        return tokenizer.encode(prompt)

    def _watch_stops(self) -> None:
        """The stop watcher's loop: ask ``stop_checker`` about the watched batches."""
        while not self._closing.wait(self._stop_poll_s):
            with self._lock:
                batches = set(self._watched)
            if not batches:
                continue
            try:
                stops = self._stop_checker(batches)
            except Exception:
                log.exception("checking batches for a stop failed; retrying at the next poll")
                continue
            with self._lock:
                fresh = {b: r for b, r in stops.items() if self._stopped.get(b) != r}
                if fresh:
                    self._stopped.update(fresh)
                    self._stops_version += 1

    def _check_stops(self) -> None:
        """Abort the requests of batches the watcher found stopped (engine thread only)."""
        with self._lock:
            if self._stops_version == self._stops_seen:
                return
            self._stops_seen = self._stops_version
            stops = dict(self._stopped)
        for request_id, submission in list(self._inflight.items()):
            reason = stops.get(submission.batch_id)
            if reason is not None:
                self._abort({request_id}, reason)

    def _abort(self, request_ids: Iterable[str], reason: str) -> None:
        for request_id in request_ids:
            output = self.engine.abort_request(request_id)
            self._resolve(HostResult(request_id, output=output, stopped=reason))

    def _step(self, engine: LLMEngine) -> None:
        started = time.monotonic()
        try:
            outputs = engine.step()
        except Exception as exc:
            self._isolate(engine, exc)
            return
        ran = [r.request_id.rpartition("#")[0] for r in engine.scheduler.running]
        ran += [o.request_id for o in outputs]
        self.load.step(started, time.monotonic(), len(ran))
        self._record_step({self._inflight[r].batch_id for r in ran if r in self._inflight})
        for output in outputs:
            if isinstance(output, RequestOutput) and output.error is not None:
                self._resolve(HostResult(output.request_id, failed=output.error))
            else:
                self._resolve(HostResult(output.request_id, output=output))

    def _isolate(self, engine: LLMEngine, exc: Exception) -> None:
        """A step failed: abort everything in flight and rerun it in halves (see above)."""
        suspects = list(self._inflight.values())
        with self._lock:
            self._stats.num_failed_steps += 1
        for submission in suspects:
            engine.abort_request(submission.request_id)
        if len(suspects) == 1:
            culprit = suspects[0].request_id
            log.error("engine step failed on %s alone: %s", culprit, exc)
            with self._lock:
                self._stats.num_culprits += 1
            self._resolve(HostResult(culprit, failed=f"engine failure: {exc}"))
            return
        log.exception("engine step failed with %d requests; isolating them", len(suspects))
        self._inflight.clear()  # they stay pending: each is answered once its group reruns
        half = len(suspects) // 2
        self._suspects.extendleft([suspects[half:], suspects[:half]])

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
        with self._lock:
            self._stats.num_resolved += 1
        with self._room:
            self._num_pending -= 1
            self._room.notify_all()
        try:
            submission.sink(result)
        except Exception:
            log.exception("a result sink failed for %s", result.request_id)
