"""The worker's Celery tasks, named explicitly: task names are part of the message format."""

from __future__ import annotations

import logging
import time

from celery import Task
from celery.exceptions import Reject, Retry
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.pipeline.dispatch import RUN_SHARD_TASK
from jobs.pipeline.file_expiry import sweep_expired_files
from worker.app import celery_app
from worker.beat import EXPIRE_TASK
from worker.runtime import WorkerRuntime, get_runtime
from worker.shard_runner import ShardInterrupted

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 5
RETRY_BACKOFF_MAX_S = 600


class ShardTaskArgs(BaseModel):
    """The one argument of ``kvbatch.run_shard``, as jobs/pipeline/dispatch.py sends it."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str = Field(pattern=r"^batch_[0-9a-f]+$", max_length=100)
    shard_index: int = Field(ge=0)


@celery_app.task(
    name=RUN_SHARD_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
)
def run_shard(self: Task, payload: dict[str, object]) -> str:
    """Run one shard; whatever fails (Redis, storage, a busy lease) runs again later.

    Its ticket keeps the worker's intake (worker/intake.py) told of the shard's lines, and
    releases them when the task ends, however it ends.
    """
    runtime = get_runtime()
    with runtime.intake.ticket(self.request.id) as ticket:
        try:
            args = ShardTaskArgs.model_validate(payload)
        except ValidationError:
            # Not ours to run, ever: acknowledge it (a failure would come back forever).
            log.error("dropping a malformed shard message: %r", payload)
            return "invalid"
        # Taken: its place in the broker's list is free, so the next tenant's shard goes in
        # now rather than when this one ends (a window that refills only on ends would have
        # to be as deep as the workers' shards in flight, and a deep FIFO undoes the turns).
        release_fair_share(runtime)
        try:
            if runtime.forward_if_misrouted(args.batch_id, args.shard_index):
                log.warning(
                    "shard %s/%d belongs to another model: sent to its model's queue",
                    args.batch_id,
                    args.shard_index,
                )
                return "forwarded"
            outcome = runtime.runner.run(args.batch_id, args.shard_index, ticket)
        except ShardInterrupted as exc:  # handed back on shutdown: another worker, now
            raise again_later(self, exc, countdown=0) from exc
        except Exception as exc:
            raise again_later(self, exc) from exc
    release_fair_share(runtime)  # cheap; makes up for a pump that failed on the take
    log.info("shard %s/%d: %s", args.batch_id, args.shard_index, outcome)
    return outcome


def retry_countdown(retries: int, visibility_timeout_s: float) -> int:
    """5 s doubling, at most 10 min, and at most half the visibility timeout.

    A retry waits out its countdown in kombu's ``unacked`` set, aged from its delivery: a
    countdown past the visibility timeout would have the message restored and delivered
    again before it is due, over and over.
    """
    backoff = min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S * 2**retries)
    return max(0, min(backoff, int(visibility_timeout_s // 2)))


def again_later(task: Task, exc: Exception, countdown: int | None = None) -> Retry | Reject:
    """What to raise so that a failed shard is never dropped.

    First choice: Celery's retry, a copy of the message with a countdown (5 s doubling, at
    most 10 min; no limit on their number, since a shard's real runs are bounded by its
    delivery count). Publishing that copy needs the broker. When the broker is down, Celery
    itself would answer with ``Reject(requeue=False)``, and on Redis a reject without
    requeue *deletes* the message: the shard would be lost (so would any plain failure of
    a late-acked task, whatever ``task_acks_on_failure_or_timeout`` says). So we reject
    with requeue: the message goes back to its queue, or, if Redis cannot be reached for
    that either, stays in kombu's unacked set and is restored after the visibility timeout.
    """
    if countdown is None:
        visibility_s = get_runtime().settings.reliability.visibility_timeout_s
        countdown = retry_countdown(task.request.retries, visibility_s)
    try:
        return task.retry(exc=exc, countdown=countdown, throw=False)
    except Reject:
        log.warning("could not schedule a retry (broker down?); requeueing: %s", exc)
        return Reject(exc, requeue=True)


@celery_app.task(name=EXPIRE_TASK, acks_late=True)
def expire_batches() -> list[str]:
    """Stop batches past their window, end every batch that can end now, send again the
    shards whose messages the broker lost (jobs/pipeline/watchdog.py), delete expired files."""
    runtime = get_runtime()
    ended = [status.value for status in runtime.finalizer.sweep()]
    runtime.watchdog.sweep()
    sweep_expired_files(runtime.store, runtime.storage, int(time.time()))
    release_fair_share(runtime)
    return ended


def release_fair_share(runtime: WorkerRuntime) -> None:
    """Let the next tenants' shards into the broker (jobs/pipeline/fair_share.py); a failure here
    costs only latency: the next shard taken or ended, or the sweep, pumps again."""
    try:
        runtime.fair.pump()
    except Exception:
        log.exception("fair-share pump failed")
