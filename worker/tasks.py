"""The worker's Celery tasks, named explicitly: task names are part of the message format."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.dispatch import RUN_SHARD_TASK
from worker.app import celery_app
from worker.beat import EXPIRE_TASK
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


class ShardTaskArgs(BaseModel):
    """The one argument of ``kvbatch.run_shard``, as jobs/dispatch.py sends it."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str = Field(pattern=r"^batch_[0-9a-f]+$", max_length=100)
    shard_index: int = Field(ge=0)


@celery_app.task(
    name=RUN_SHARD_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(Exception,),
    retry_backoff=5,
    retry_backoff_max=600,
    max_retries=10,
)
def run_shard(payload: dict[str, object]) -> str:
    """Run one shard; Redis or storage outages retry later (deliveries stay bounded)."""
    try:
        args = ShardTaskArgs.model_validate(payload)
    except ValidationError:
        # Not ours to run, ever: acknowledge it (a failure would come back forever).
        log.error("dropping a malformed shard message: %r", payload)
        return "invalid"
    outcome = get_runtime().runner.run(args.batch_id, args.shard_index)
    log.info("shard %s/%d: %s", args.batch_id, args.shard_index, outcome)
    return outcome


@celery_app.task(name=EXPIRE_TASK, acks_late=True)
def expire_batches() -> list[str]:
    """Stop batches past their window and end every batch that can end now."""
    return [status.value for status in get_runtime().finalizer.sweep()]
