"""Batch intake: validate the input file as it streams, shard it, dispatch the shards.

Runs off the request path (a thread in the API process). Every step is idempotent and the
batch id stays in the store's ``validating`` set until intake finishes, so a restarted API
picks up whatever was in flight.

    validating ──(file invalid)────────────► failed       errors.data = line issues
        │
        └──(valid)─ shards written ─► in_progress ─► dispatch kvbatch.run_shard × shards
                         (cancelled meanwhile: shards deleted, nothing dispatched)

A line whose body the endpoint would refuse is not a file-level issue: it goes into its
shard as its rejection (jobs/wire/lines.py ``RejectedLine``) and the worker answers it with a 400.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from jobs.limits import Limits
from jobs.pipeline.admission import priority_of
from jobs.pipeline.dispatch import ShardDispatcher
from jobs.pipeline.fair_share import ModelFairQueues
from jobs.pipeline.shards import ShardWriter
from jobs.state.ids import BatchId
from jobs.state.quotas import ActiveBatches, Quota, QuotaExceeded, TokenEstimate, quota_for
from jobs.state.records import BatchRecord
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore
from jobs.storage import ObjectNotFound, Storage, WriterScope, read_lines
from jobs.storage.parquet import ParquetInputError, is_parquet, iter_parquet_lines
from jobs.wire.line_check import LineChecker, LineIssue
from jobs.wire.output_schema import output_schema_key

log = logging.getLogger(__name__)

INTAKE_LOCK_S = 3600


@dataclass(slots=True)
class IntakeResult:
    issues: list[LineIssue] = field(default_factory=list)
    num_issues: int = 0
    num_requests: int = 0
    num_shards: int = 0
    model: str | None = None
    json_schema: str | None = None  # the one response_format schema of every line
    enqueued_tokens: int = 0  # its quota estimate (jobs/state/quotas.py)


@dataclass(slots=True)
class BatchIntake:
    store: JobStore
    storage: Storage
    dispatcher: ShardDispatcher
    limits: Limits
    clock: Callable[[], float] = time.time
    quotas: dict[str, Quota] = field(default_factory=dict)
    fair: ModelFairQueues | None = None

    def run(self, batch_id: BatchId) -> None:
        """Take one batch from ``validating`` to ``in_progress`` or ``failed``."""
        with self.store.intake_lock(batch_id, INTAKE_LOCK_S) as held:
            if not held:
                return
            try:
                batch = self.store.load_batch(batch_id)
                if batch is not None and batch.status is BatchStatus.VALIDATING:
                    self._intake(batch)
            finally:
                self.store.done_validating(batch_id)

    def _now(self) -> int:
        return int(self.clock())

    def _intake(self, batch: BatchRecord) -> None:
        shards = ShardWriter(self.storage, batch.id, self.limits.shard_size)
        try:
            result = self.validate_into(batch, shards)
        except Exception:
            shards.discard()
            log.exception("intake of %s failed", batch.id)
            self._fail(batch.id, [LineIssue("internal_error", "input could not be processed")])
            return
        if not result.issues:
            result.issues = self._over_quota(batch, result)
        if result.issues:
            shards.discard()
            self._fail(batch.id, result.issues)
            return
        if result.json_schema is not None and (batch.metadata or {}).get("output_format") == (
            "parquet"
        ):
            with WriterScope(self.storage.writer(output_schema_key(batch.id))) as out:
                out.write(result.json_schema.encode())
        started = self.store.transition(
            batch.id,
            BatchStatus.IN_PROGRESS,
            self._now(),
            {
                "model": result.model or "",
                "num_shards": str(result.num_shards),
                "shard_size": str(self.limits.shard_size),
                "total": str(result.num_requests),
                "enqueued_tokens": str(result.enqueued_tokens),
            },
        )
        if started is None:
            shards.discard()
            return
        assert result.model is not None, "a valid batch names its model"
        self._dispatch(batch, result.num_shards, result.model)

    def _dispatch(self, batch: BatchRecord, num_shards: int, model: str) -> None:
        """Send the shards to ``model``'s queue (jobs/pipeline/routing.py)."""
        priority = priority_of(batch.metadata)
        try:
            if self.fair is not None:  # per-tenant queues, released in turns
                self.fair.submit(batch.tenant, batch.id, num_shards, priority, model)
            else:
                for index in range(num_shards):
                    self.dispatcher.dispatch(batch.id, index, priority, model)
        except Exception:
            log.exception("dispatch of %s failed", batch.id)
            issue = LineIssue("dispatch_failed", "the batch could not be queued for inference")
            self._fail(batch.id, [issue])

    def _over_quota(self, batch: BatchRecord, result: IntakeResult) -> list[LineIssue]:
        """The enqueued-token quota, checked once the batch's estimate is known."""
        quota = quota_for(self.quotas, batch.tenant, result.model)
        try:
            ActiveBatches(self.store).check_enqueue(
                batch, result.model, result.enqueued_tokens, quota
            )
        except QuotaExceeded as exc:
            return [LineIssue(exc.code or "token_limit_exceeded", exc.message)]
        return []

    def _fail(self, batch_id: BatchId, issues: list[LineIssue]) -> None:
        errors = json.dumps([i.to_dict() for i in issues])
        self.store.transition(batch_id, BatchStatus.FAILED, self._now(), {"errors": errors})

    def validate_into(self, batch: BatchRecord, shards: ShardWriter) -> IntakeResult:
        """Check every line; lines go to ``shards`` until the first file-level issue appears."""
        result = IntakeResult()
        checker = LineChecker(batch.endpoint, self.limits)
        estimate = TokenEstimate(default_output=self.limits.max_tokens)
        file = self.store.get_file(batch.tenant, batch.input_file_id)
        if file is None:
            result.issues.append(LineIssue("file_not_found", "the input file was deleted"))
            return result
        with self._input_lines(file.storage_key, result) as lines:
            for line_no, raw in enumerate(lines, start=1):
                if raw == b"":
                    continue
                if result.num_requests == self.limits.max_requests_per_file:
                    self._add_issue(result, self._too_many(line_no))
                    break
                result.num_requests += 1
                verdict = checker.check(line_no, raw)
                if isinstance(verdict, LineIssue):
                    self._add_issue(result, verdict)
                elif result.issues:
                    continue  # the batch fails: only the issues still matter
                elif verdict is None:
                    assert raw is not None
                    shards.add(raw)
                    estimate.add(raw)
                else:  # answered with a 400 line by the worker, in its place
                    shards.add(verdict.model_dump_json().encode())
        if result.num_requests == 0 and not result.issues:
            result.issues.append(LineIssue("empty_file", "the input file has no requests"))
        result.num_shards = shards.finish() if not result.issues else 0
        result.model = checker.model
        result.enqueued_tokens = estimate.tokens
        result.json_schema = checker.shared_schema.schema_text
        return result

    def _too_many(self, line_no: int) -> LineIssue:
        limit = self.limits.max_requests_per_file
        return LineIssue("too_many_requests", f"a batch holds at most {limit} requests", line_no)

    def _add_issue(self, result: IntakeResult, issue: LineIssue) -> None:
        result.num_issues += 1
        if len(result.issues) < self.limits.max_errors_reported:
            result.issues.append(issue)

    @contextmanager
    def _input_lines(self, key: str, result: IntakeResult) -> Iterator[Iterator[bytes | None]]:
        try:
            head = self.storage.read_head(key, 4)
        except ObjectNotFound:
            result.issues.append(LineIssue("file_not_found", "the input file is missing"))
            yield iter(())
            return
        if not is_parquet(head):
            yield read_lines(self.storage, key, self.limits.max_line_bytes)
            return
        with self.storage.local_copy(key) as path:
            try:
                yield iter_parquet_lines(path)
            except ParquetInputError as exc:
                result.issues.append(LineIssue("invalid_parquet", str(exc)))
