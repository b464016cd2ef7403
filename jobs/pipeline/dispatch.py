"""Hands shards to the worker: Celery messages by task name on the Redis broker.

The API never imports the worker: it only knows the task's name and its one small,
JSON-serializable argument ``{"batch_id", "shard_index"}``. A shard goes to the queue of
its batch's model (jobs/pipeline/routing.py), which only workers holding that model consume.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from jobs.pipeline.routing import ModelRouter

RUN_SHARD_TASK = "kvbatch.run_shard"
SENT_AT_HEADER = "kvbatch_sent_at"


class ShardDispatcher:
    def __init__(
        self,
        broker_url: str,
        router: ModelRouter,
        transport_options: dict[str, Any] | None = None,
    ) -> None:
        self.router = router
        self._app = Celery("kvbatch-producer", broker=broker_url, set_as_current=False)
        self._app.conf.update(
            broker_transport_options=transport_options or {},
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
        )

    def dispatch(self, batch_id: str, shard_index: int, priority: int, model: str) -> str:
        """Send one shard's task to ``model``'s queue; returns the Celery task id."""
        return self.send_to(self.router.queue_of(model), batch_id, shard_index, priority)

    def send_to(self, queue: str, batch_id: str, shard_index: int, priority: int) -> str:
        """Send one shard's task to ``queue`` (a queue :attr:`router` named)."""
        result = self._app.send_task(
            RUN_SHARD_TASK,
            args=[{"batch_id": batch_id, "shard_index": shard_index}],
            queue=queue,
            priority=priority,
            headers={SENT_AT_HEADER: time.time()},  # the age of the oldest queued shard
        )
        return str(result.id)

    def close(self) -> None:
        self._app.close()
