"""Running one shard: its lines into the shared engine, its results written once.

load batch ─► terminal / done? ──► nothing to do (a redelivery)
    │
    ├─ take the lease (busy? retry later), count the delivery, no finalizer yet?
    ├─ rerun of a half-done shard? take back what the last run counted
    ├─ over max deliveries? every line becomes a ``shard_failed`` error
    ├─ else submit each line (waiting for room), collect results as they come,
    │  counting completed/failed and tokens live
    ├─ write results/{batch}/{shard}.jsonl + .errors.jsonl, mark the shard done
    └─ drop the lease, try to finalize the batch
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from jobs.pipeline.admission import priority_of
from jobs.pipeline.finalize import BatchFinalizer
from jobs.pipeline.shards import shard_key
from jobs.state.records import BatchRecord
from jobs.state.shard_ledger import ShardLedger, ShardOutcome, write_shard_results
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore
from jobs.storage import Storage, read_lines
from jobs.wire.lines import OutputLine, RejectedLine, ShardLine, parse_shard_line
from worker.engine_host import EngineHost
from worker.engine_requests import EngineRequest
from worker.host_records import HostResult, Interrupted, Submission
from worker.intake import NO_TICKET, IntakeTicket
from worker.line_parts import PendingLines, requests_of
from worker.output_lines import error_line, rejected_line, stopped_line

log = logging.getLogger(__name__)


class ShardInterrupted(Exception):
    """The engine host stopped before the shard finished; nothing of this run is kept."""


class ShardBusy(Exception):
    """Another run holds this shard's lease; the delivery must come back later."""


@dataclass(slots=True)
class ShardLimits:
    max_deliveries: int = 5
    lease_s: int = 30
    max_line_bytes: int = 2_000_000


@dataclass(slots=True)
class _ShardRun:
    """One run of a shard: each line's answer, and the lines whose requests are still out."""

    lines: list[ShardLine]
    pending: PendingLines
    answers: list[tuple[OutputLine, bool] | None] = field(init=False)

    def __post_init__(self) -> None:
        self.answers = [None] * len(self.lines)


@dataclass(slots=True)
class ShardRunner:
    store: JobStore
    ledger: ShardLedger
    storage: Storage
    finalizer: BatchFinalizer
    host: EngineHost
    limits: ShardLimits

    def run(self, batch_id: str, index: int, ticket: IntakeTicket = NO_TICKET) -> str:
        """Run shard ``index`` of ``batch_id``; returns what happened, for the task's log.

        ``ticket`` tells the worker's intake how many of the shard's lines are outstanding.
        """
        batch = self.store.load_batch(batch_id)
        if batch is None or batch.status.is_terminal or batch.status is BatchStatus.VALIDATING:
            return "skipped"
        if not 0 <= index < batch.num_shards:
            raise ValueError(f"{batch_id} has {batch.num_shards} shards, not {index + 1}")
        if self.ledger.is_done(batch_id, index):
            self.finalizer.try_finalize(batch.id)
            return "already_done"
        with self._lease(batch_id, index):
            self.ledger.mark_seen(batch_id, [index], time.time())  # for jobs/pipeline/watchdog.py
            deliveries = self.ledger.record_delivery(batch_id, index)
            if self.ledger.finalizer_held(batch_id):
                return "finalizing"
            if deliveries > 1:
                self.ledger.take_back_counts(batch_id, index)
            if deliveries > self.limits.max_deliveries:
                outcome = self._give_up(batch, index, deliveries)
            else:
                outcome = self._execute(batch, index, ticket)
            write_shard_results(self.storage, batch_id, index, outcome)
            self.ledger.mark_done(batch_id, index, len(outcome.outputs), len(outcome.errors))
        self.finalizer.try_finalize(batch.id)
        return "done"

    @contextmanager
    def _lease(self, batch_id: str, index: int) -> Iterator[None]:
        """Hold the shard's lease, renewed in the background, until the block ends.

        Raises ``ShardBusy`` when another live run holds it: the task retries later rather
        than acknowledging the message, because that run may yet die without finishing.
        """
        ttl = self.limits.lease_s
        token = secrets.token_hex(8)
        if not self.ledger.hold_lease(batch_id, index, ttl, token):
            raise ShardBusy(f"{batch_id}/{index} is running elsewhere")
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(ttl / 3):
                try:
                    if not self.ledger.hold_lease(batch_id, index, ttl, token):
                        log.error("the lease of %s/%d passed to another run", batch_id, index)
                except Exception:
                    log.exception("renewing the lease of %s/%d failed", batch_id, index)

        renewer = threading.Thread(target=renew, name=f"lease-{index}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            self.ledger.drop_lease(batch_id, index, token)

    def _lines(self, batch_id: str, index: int) -> list[ShardLine]:
        key = shard_key(batch_id, index)
        raws = read_lines(self.storage, key, self.limits.max_line_bytes)
        return [parse_shard_line(raw) for raw in raws if raw]

    def _give_up(self, batch: BatchRecord, index: int, deliveries: int) -> ShardOutcome:
        """A shard that keeps killing its worker: answer every line with an error instead."""
        log.error("shard %s/%d delivered %d times; failing its lines", batch.id, index, deliveries)
        message = f"the shard was started {deliveries} times without finishing"
        lines = [
            error_line(line.custom_id, "shard_failed", message)
            for line in self._lines(batch.id, index)
        ]
        self.ledger.add_counts(batch.id, index, failed=len(lines))
        return ShardOutcome(errors=lines)

    def _execute(self, batch: BatchRecord, index: int, ticket: IntakeTicket) -> ShardOutcome:
        lines = self._lines(batch.id, index)
        ticket.sized(len(lines))
        run = _ShardRun(lines, PendingLines((batch.id, index)))
        results: queue.SimpleQueue[HostResult] = queue.SimpleQueue()
        priority = priority_of(batch.metadata)
        self.host.watch(batch.id)
        try:
            for position, line in enumerate(lines):
                requests = self._prepare(batch.id, line)
                if isinstance(requests, OutputLine):  # rejected, stopped or refused: answered
                    run.answers[position] = (requests, False)
                    self.ledger.add_counts(batch.id, index, failed=1)
                    ticket.answered()
                    continue
                assert not isinstance(line, RejectedLine), "a rejected line makes no request"
                keys = run.pending.add(position, line, len(requests))
                for key, request in zip(keys, requests, strict=True):
                    self.host.submit(
                        Submission(
                            key, batch.id, request.prompt, request.params, results.put, priority
                        )
                    )
                    while not results.empty():
                        self._collect(batch.id, index, run, results.get(), ticket)
            while run.pending.pending:
                self._collect(batch.id, index, run, results.get(), ticket)
        finally:
            self.host.unwatch(batch.id)
            if run.pending.pending:  # this run failed: its requests must not outlive it
                self.host.withdraw(set(run.pending.pending))
        outcome = ShardOutcome()
        for answer in run.answers:
            assert answer is not None, "every line of the shard has an answer"
            line_out, ok = answer
            (outcome.outputs if ok else outcome.errors).append(line_out)
        return outcome

    def _prepare(self, batch_id: str, line: ShardLine) -> list[EngineRequest] | OutputLine:
        """The line's engine requests, or its answer when it makes none."""
        if isinstance(line, RejectedLine):  # its body failed validation at intake
            return rejected_line(line)
        stopped = self.host.stop_reason(batch_id)
        if stopped is not None:
            return stopped_line(line.custom_id, stopped)
        return requests_of(line, self.host.engine)

    def _collect(
        self, batch_id: str, index: int, run: _ShardRun, result: HostResult, ticket: IntakeTicket
    ) -> None:
        """File one engine result under its line; answer the line once all its parts are in."""
        if isinstance(result, Interrupted):
            # Not an answer: the shard must not be marked done; its task fails and the
            # shard runs again (a retry, or the broker's redelivery).
            raise ShardInterrupted(f"{batch_id}/{index}: the worker is shutting down")
        done = run.pending.collect(result, self.host.engine.tokenizer)
        if done is None:
            return
        position, answer = done
        run.answers[position] = (answer.line, answer.ok)
        self.ledger.add_counts(batch_id, index, **answer.counts)
        ticket.answered()
