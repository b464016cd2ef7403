"""Ending a batch: assemble the output and error files, register them, set the final status.

    in_progress ─(all shards done)──────────────► finalizing ─► completed
    cancelling  ─(no shard running any more)─────────────────► cancelled
    in_progress ─(past expires_at, none running)─────────────► expired

Exactly one finalizer works on a batch at a time (a Redis lock). When a batch stops early,
the lock is taken *before* looking for running shards and a shard task checks the lock
*after* taking its lease, so a shard either is seen running (the finalizer waits) or sees
the finalizer and does nothing. Shards that never ran have their lines written as
``batch_cancelled`` / ``batch_expired`` errors. Counts are set from the assembled files, so
``completed + failed == total`` however many times shards were redelivered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobs.limits import Limits
from jobs.pipeline.shards import shard_key, shard_prefix
from jobs.pipeline.uploads import file_storage_key
from jobs.state.ids import BatchId, FileId, new_file_id, new_request_id
from jobs.state.records import BatchRecord, FileRecord
from jobs.state.service_stats import FinishedStats
from jobs.state.shard_ledger import ShardLedger, StopReason, result_key, results_prefix
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore
from jobs.storage import ObjectNotFound, ObjectWriter, Storage, WriterScope, read_lines
from jobs.storage.embedding_parquet import embeddings_to_parquet
from jobs.storage.parquet import jsonl_to_parquet
from jobs.wire.lines import EMBEDDINGS_URL, LineError, OutputLine
from jobs.wire.output_schema import output_schema_key

log = logging.getLogger(__name__)

OUTPUT_FILE_TTL_S = 30 * 24 * 3600


@dataclass(slots=True)
class _Assembled:
    """One assembled object: straight into its file's key for JSONL, staged for Parquet."""

    file_id: FileId
    key: str
    num_lines: int = 0


@dataclass(slots=True)
class BatchFinalizer:
    store: JobStore
    ledger: ShardLedger
    storage: Storage
    lock_ttl_s: int = field(default=600, kw_only=True)
    max_line_bytes: int = field(default=Limits().max_line_bytes, kw_only=True)
    clock: Callable[[], float] = field(default=time.time, kw_only=True)

    def stop_reason(self, batch: BatchRecord) -> StopReason | None:
        """Why ``batch`` should stop early now, if it should."""
        if batch.status is BatchStatus.CANCELLING:
            return StopReason.CANCELLED
        flag = self.ledger.stop_flag(batch.id)
        if flag is not None:
            return flag
        if batch.expires_at <= self.clock() and batch.status is BatchStatus.IN_PROGRESS:
            return StopReason.EXPIRED
        return None

    def sweep(self) -> list[BatchStatus]:
        """Mark batches past their window to stop, and finalize whatever can end now."""
        ended = []
        for batch_id in self.ledger.batch_ids():
            batch = self.store.load_batch(batch_id)
            if batch is None or batch.status.is_terminal or batch.status is BatchStatus.VALIDATING:
                continue
            if self.stop_reason(batch) is StopReason.EXPIRED:
                self.ledger.request_stop(batch.id, StopReason.EXPIRED)
            status = self.try_finalize(batch.id)
            if status is not None:
                ended.append(status)
        return ended

    def try_finalize(self, batch_id: BatchId) -> BatchStatus | None:
        """End the batch if it can end now; returns its final status, or None if not yet."""
        batch = self.store.load_batch(batch_id)
        if batch is None or batch.status.is_terminal or batch.status is BatchStatus.VALIDATING:
            return None
        stop = self.stop_reason(batch)
        all_done = len(self.ledger.done_shards(batch_id)) >= batch.num_shards
        if stop is None and not all_done:
            return None
        with self.ledger.finalizer_lock(batch_id, self.lock_ttl_s) as held:
            if not held:
                return None
            if not all_done and self.ledger.any_lease(batch_id, batch.num_shards):
                return None
            if all_done and stop is StopReason.EXPIRED and not self.ledger.stop_flag(batch_id):
                stop = None  # every shard finished before anything was stopped
            return self._finalize(batch, stop)

    def _finalize(self, batch: BatchRecord, stop: StopReason | None) -> BatchStatus | None:
        now = int(self.clock())
        starting = stop is None and batch.status is BatchStatus.IN_PROGRESS
        if starting and self.store.transition(batch.id, BatchStatus.FINALIZING, now) is None:
            return None  # cancelled meanwhile: the next attempt ends it as cancelled
        done = self.ledger.done_shards(batch.id)
        output, errors = self._assemble(batch, done, stop)
        parquet = (batch.metadata or {}).get("output_format") == "parquet"
        fields = {
            "output_file_id": self._register(batch, output, "output", parquet, now) or "",
            "error_file_id": self._register(batch, errors, "error", parquet, now) or "",
            "completed": str(output.num_lines),
            "failed": str(errors.num_lines),
        }
        target = stop.status if stop is not None else BatchStatus.COMPLETED
        ended = self.store.transition(batch.id, target, now, fields)
        if ended is None and target is BatchStatus.COMPLETED:
            # A cancel landed while finalizing: every request ran, so the files stand as is.
            target = BatchStatus.CANCELLED
            ended = self.store.transition(batch.id, target, now, fields)
        if ended is None:
            log.warning("batch %s could not move to %s", batch.id, target.value)
            return None
        final = self.store.load_batch(batch.id)
        if final is not None:
            FinishedStats(self.store).record(final, target, now)
        self._clean_up(batch)
        return target

    def _assemble(
        self, batch: BatchRecord, done: set[int], stop: StopReason | None
    ) -> tuple[_Assembled, _Assembled]:
        """Stream every shard's results, in shard order, into one output and one error object.

        Shards missing from ``done`` (only when stopping early) contribute one stop error
        per input line instead.
        """
        parquet = (batch.metadata or {}).get("output_format") == "parquet"
        output, errors = (self._target(batch.id, kind, parquet) for kind in ("output", "error"))
        with (
            WriterScope(self.storage.writer(output.key)) as out,
            WriterScope(self.storage.writer(errors.key)) as err,
        ):
            for index in range(batch.num_shards):
                if index in done:
                    output.num_lines += self._copy(result_key(batch.id, index, False), out)
                    errors.num_lines += self._copy(result_key(batch.id, index, True), err)
                else:
                    assert stop is not None, "only an early stop finalizes with shards undone"
                    errors.num_lines += self._stop_lines(batch.id, index, stop, err)
        return output, errors

    @staticmethod
    def _target(batch_id: str, kind: str, parquet: bool) -> _Assembled:
        file_id = new_file_id()
        staged = f"{results_prefix(batch_id)}{kind}.jsonl"
        return _Assembled(file_id, staged if parquet else file_storage_key(file_id))

    def _copy(self, key: str, out: ObjectWriter) -> int:
        count = 0
        for line in read_lines(self.storage, key, self.max_line_bytes):
            if line:
                out.write(line + b"\n")
                count += 1
        return count

    def _stop_lines(self, batch_id: str, index: int, stop: StopReason, out: ObjectWriter) -> int:
        count = 0
        for raw in read_lines(self.storage, shard_key(batch_id, index), self.max_line_bytes):
            if not raw:
                continue
            line = OutputLine(
                id=new_request_id(),
                custom_id=json.loads(raw)["custom_id"],
                error=LineError(code=stop.code, message=stop.message),
            )
            out.write(line.model_dump_json().encode() + b"\n")
            count += 1
        return count

    def _register(
        self, batch: BatchRecord, part: _Assembled, kind: str, parquet: bool, now: int
    ) -> FileId | None:
        """Make an assembled object a ``batch_output`` file of the batch's tenant."""
        if part.num_lines == 0:
            self.storage.delete(part.key)
            return None
        file_id = part.file_id
        key = file_storage_key(file_id)
        if parquet and batch.endpoint == EMBEDDINGS_URL and kind == "output":
            embeddings_to_parquet(self.storage, part.key, key)
        elif parquet:
            schema = self._output_schema(batch.id) if kind == "output" else None
            jsonl_to_parquet(self.storage, part.key, key, json_schema=schema)
        extension = "parquet" if parquet else "jsonl"
        self.store.put_file(
            FileRecord(
                id=file_id,
                tenant=batch.tenant,
                bytes=self.storage.size(key),
                created_at=now,
                filename=f"{batch.id}_{kind}.{extension}",
                purpose="batch_output",
                storage_key=key,
                expires_at=now + (batch.output_ttl_s or OUTPUT_FILE_TTL_S),
            )
        )
        return file_id

    def _output_schema(self, batch_id: str) -> dict[str, Any] | None:
        """The schema every line shared, kept by intake for a Parquet output (or None)."""
        try:
            text = b"".join(self.storage.read_chunks(output_schema_key(batch_id)))
        except ObjectNotFound:
            return None
        schema = json.loads(text)
        return schema if isinstance(schema, dict) else None

    def _clean_up(self, batch: BatchRecord) -> None:
        self.ledger.forget(batch.id, batch.num_shards)
        self.storage.delete_prefix(results_prefix(batch.id))
        self.storage.delete_prefix(shard_prefix(batch.id))
