"""Running one shard: its lines into the shared engine, its results written once.

load batch ─► terminal / done? ──► nothing to do (a redelivery)
    │
    ├─ take the lease (busy? retry later), count the delivery, no finalizer yet?
    ├─ rerun of a half-done shard? take back what the last run counted
    ├─ over max deliveries? every line becomes a ``shard_failed`` error
    ├─ else resume from the lines earlier runs committed (jobs/state/checkpoints.py), submit
    │  the others (waiting for room), collect results as they come, counting
    │  completed/failed and tokens live and committing finished lines every few seconds
    ├─ write results/{batch}/{shard}.jsonl + .errors.jsonl, mark the shard done
    └─ drop the lease, try to finalize the batch
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from engine.lora_request import LoRARequest
from jobs.limits import Limits
from jobs.pipeline.admission import priority_of
from jobs.pipeline.finalize import BatchFinalizer
from jobs.pipeline.shards import shard_key
from jobs.state.checkpoints import (
    CommitPolicy,
    CommittedLine,
    drop_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
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
from worker.output_lines import LineAnswer, error_line, rejected_line, stopped_line

log = logging.getLogger(__name__)

FAILED = {"failed": 1}  # what a line answered with an error adds to its batch's counts


class ShardInterrupted(Exception):
    """The engine host stopped before the shard finished; nothing of this run is kept."""


class ShardBusy(Exception):
    """Another run holds this shard's lease; the delivery must come back later."""


@dataclass(slots=True)
class ShardLimits:
    max_deliveries: int = 5
    lease_s: int = 30
    max_line_bytes: int = Limits().max_line_bytes
    commit: CommitPolicy = field(default_factory=CommitPolicy)


@dataclass(slots=True)
class _ShardRun:
    """One run of a shard: each line's answer, and the lines whose requests are still out.

    ``committed`` holds every answered line (the checkpoint's content); the last
    ``num_uncommitted`` of them are not in the stored checkpoint yet.
    """

    lines: list[ShardLine]
    pending: PendingLines
    policy: CommitPolicy
    answers: list[tuple[OutputLine, bool] | None] = field(init=False)
    committed: list[CommittedLine] = field(default_factory=list)
    num_uncommitted: int = 0
    last_commit: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.answers = [None] * len(self.lines)

    def commit_due(self) -> bool:
        self.num_uncommitted += 1
        elapsed = time.monotonic() - self.last_commit
        return self.num_uncommitted >= self.policy.every_lines or elapsed >= self.policy.every_s

    def mark_committed(self) -> None:
        self.num_uncommitted = 0
        self.last_commit = time.monotonic()

    def outcome(self) -> ShardOutcome:
        outcome = ShardOutcome()
        for answer in self.answers:
            assert answer is not None, "every line of the shard has an answer"
            line_out, ok = answer
            (outcome.outputs if ok else outcome.errors).append(line_out)
        return outcome


@dataclass(slots=True)
class ShardRunner:
    store: JobStore
    ledger: ShardLedger
    storage: Storage
    finalizer: BatchFinalizer
    host: EngineHost
    limits: ShardLimits
    # The LoRA adapters of the model this worker holds, by the name a line's model uses.
    adapters: Mapping[str, LoRARequest] = field(default_factory=dict)

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
            if deliveries.starts > 1:
                self.ledger.take_back_counts(batch_id, index)
            try:
                if deliveries.unfinished > self.limits.max_deliveries:
                    outcome = self._give_up(batch, index, deliveries.unfinished)
                else:
                    outcome = self._execute(batch, index, ticket)
                write_shard_results(self.storage, batch_id, index, outcome)
                self.ledger.mark_done(batch_id, index, len(outcome.outputs), len(outcome.errors))
            except Exception:
                # Storage or Redis away, or a shutdown handing the shard back: the task retries
                # it. Only runs that die with their worker count towards giving it up.
                with suppress(Exception):
                    self.ledger.record_failed_run(batch_id, index)
                raise
            drop_checkpoint(self.storage, batch_id, index)
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
        # Started and not ended: should the lease lapse with this mark still set, the run
        # died, and the watchdog sends the shard again at once (jobs/pipeline/watchdog.py).
        self.ledger.mark_running(batch_id, index, token)
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
            # The mark first: a mark without a lease, even for an instant, reads as a dead run.
            self.ledger.clear_running(batch_id, index, token)
            self.ledger.drop_lease(batch_id, index, token)

    def _lines(self, batch_id: str, index: int) -> list[ShardLine]:
        key = shard_key(batch_id, index)
        raws = read_lines(self.storage, key, self.limits.max_line_bytes)
        return [parse_shard_line(raw) for raw in raws if raw]

    def _give_up(self, batch: BatchRecord, index: int, deliveries: int) -> ShardOutcome:
        """A shard that keeps killing its worker: answer every line not yet committed with
        an error instead."""
        log.error("shard %s/%d delivered %d times; failing its lines", batch.id, index, deliveries)
        message = f"the shard was started {deliveries} times without finishing"
        run = self._resume(batch.id, index, self._lines(batch.id, index))
        for position, line in enumerate(run.lines):
            if run.answers[position] is None:
                failed = error_line(line.custom_id, "shard_failed", message)
                self._answer(batch.id, index, run, position, LineAnswer(failed, False, FAILED))
        return run.outcome()

    def _resume(self, batch_id: str, index: int, lines: list[ShardLine]) -> _ShardRun:
        """A run that starts from the lines earlier runs committed (jobs/state/checkpoints.py),
        counting them again: ``take_back_counts`` took back all that earlier runs counted."""
        run = _ShardRun(lines, PendingLines((batch_id, index)), self.limits.commit)
        committed = read_checkpoint(self.storage, batch_id, index)
        totals: dict[str, int] = {}
        for position, entry in committed.items():
            if position < len(lines) and entry.line.custom_id == lines[position].custom_id:
                run.answers[position] = (entry.line, entry.ok)
                run.committed.append(entry)
                for name, value in entry.counts.items():
                    totals[name] = totals.get(name, 0) + value
        if run.committed:
            log.info("shard %s/%d resumes with %d lines", batch_id, index, len(run.committed))
            self.ledger.add_counts(batch_id, index, **totals)
        return run

    def _answer(
        self,
        batch_id: str,
        index: int,
        run: _ShardRun,
        position: int,
        answer: LineAnswer,
        ticket: IntakeTicket = NO_TICKET,
    ) -> None:
        """File one line's answer: committed with the next checkpoint, counted at once.

        Committed first: whatever the live counters show is at least as much as the
        checkpoint holds, so a kill right after a count never costs a recompute.
        """
        run.answers[position] = (answer.line, answer.ok)
        entry = CommittedLine(
            position=position, ok=answer.ok, counts=answer.counts, line=answer.line
        )
        run.committed.append(entry)
        if run.commit_due() and self._save(batch_id, index, run):
            run.mark_committed()
        self.ledger.add_counts(batch_id, index, **answer.counts)
        ticket.answered()

    def _execute(self, batch: BatchRecord, index: int, ticket: IntakeTicket) -> ShardOutcome:
        run = self._resume(batch.id, index, self._lines(batch.id, index))
        ticket.sized(sum(answer is None for answer in run.answers))
        results: queue.SimpleQueue[HostResult] = queue.SimpleQueue()
        priority = priority_of(batch.metadata)
        self.host.watch(batch.id)
        try:
            for position, line in enumerate(run.lines):
                if run.answers[position] is not None:  # committed by an earlier run
                    continue
                requests = self._prepare(batch.id, line)
                if isinstance(requests, OutputLine):  # rejected, stopped or refused: answered
                    self._answer(
                        batch.id, index, run, position, LineAnswer(requests, False, FAILED), ticket
                    )
                    continue
                assert not isinstance(line, RejectedLine), "a rejected line makes no request"
                keys = run.pending.add(position, line, len(requests))
                for key, request in zip(keys, requests, strict=True):
                    self.host.submit(
                        Submission(
                            key,
                            batch.id,
                            request.prompt,
                            request.params,
                            results.put,
                            priority,
                            request.lora_request,
                            tenant=batch.tenant,
                        )
                    )
                    while not results.empty():
                        self._collect(batch.id, index, run, results.get(), ticket)
            while run.pending.pending:
                self._collect(batch.id, index, run, self._next(results), ticket)
        finally:
            self.host.unwatch(batch.id)
            if run.pending.pending:  # this run failed: its requests must not outlive it
                self.host.withdraw(set(run.pending.pending))
            if run.num_uncommitted and None in run.answers:  # kept for the next run
                self._save(batch.id, index, run)
        return run.outcome()

    def _save(self, batch_id: str, index: int, run: _ShardRun) -> bool:
        """Commit the finished lines; a failed commit (storage down) only costs a rerun
        more work, so it never fails the run."""
        try:
            write_checkpoint(self.storage, batch_id, index, run.committed)
        except Exception:
            log.exception("could not commit the finished lines of %s/%d", batch_id, index)
            return False
        return True

    def _next(self, results: queue.SimpleQueue[HostResult]) -> HostResult:
        """The next engine result; ``Interrupted`` once the host closes without answering
        (requests it never admitted get no result of their own)."""
        while True:
            try:
                return results.get(timeout=1.0)
            except queue.Empty:
                if self.host.closing:
                    return Interrupted(None)

    def _prepare(self, batch_id: str, line: ShardLine) -> list[EngineRequest] | OutputLine:
        """The line's engine requests, or its answer when it makes none."""
        if isinstance(line, RejectedLine):  # its body failed validation at intake
            return rejected_line(line)
        stopped = self.host.stop_reason(batch_id)
        if stopped is not None:
            return stopped_line(line.custom_id, stopped)
        return requests_of(line, self.host.engine, self.adapters)

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
        self._answer(batch_id, index, run, position, answer, ticket)
