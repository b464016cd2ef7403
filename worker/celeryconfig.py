"""Celery configuration for kvbatch workers, every reliability setting chosen on purpose.

- ``task_acks_late``: a shard is acknowledged only after its results are written, so a
  worker that dies mid-shard loses nothing; shard tasks are idempotent (jobs/state/shard_ledger.py).
- ``task_reject_on_worker_lost``: a task whose worker process vanished is re-queued instead
  of acknowledged; deliveries are counted in Redis and bounded by ``max_shard_deliveries``.
- No failure ever ends a shard task: on the Redis transport a failed late-acked task is
  rejected without requeue, which deletes its message whatever
  ``task_acks_on_failure_or_timeout`` says. ``kvbatch.run_shard`` therefore turns every
  error into a retry, or, when the broker is down, a reject with requeue (worker/tasks.py).
- ``worker_prefetch_multiplier=1``: a worker reserves at most as many shards as it has
  threads; within that, its intake gate (worker/bootstep.py, worker/intake.py) fetches
  one only while the engine has room, leaving the rest in Redis to other workers.
- ``visibility_timeout``: Redis redelivers an unacknowledged shard after this long, so it
  must stay well above the longest shard (shards are minutes; the default is an hour).
  Consumers look for such messages every ``unacked_restore_interval_s``.
- ``priority_steps`` 0-9: the Redis transport serves priority 0 first; metadata.priority
  0-9 maps onto it one to one (lower runs first, as in the engine's scheduler).
- Task events on, so that Flower shows workers, tasks and their arguments.
- ``task_queues``: housekeeping and the shard queue of the model this worker serves
  (jobs/pipeline/routing.py), so ``celery worker`` without ``--queues`` consumes exactly those.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from jobs.settings import Settings
from worker.beat import beat_schedule
from worker.settings import consumed_queues


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = settings.redis.broker_transport_options()
    transport["visibility_timeout"] = settings.reliability.visibility_timeout_s
    # How often a consumer looks for messages past their visibility timeout (kombu's default
    # scans every 10th of 10-second ticks); the scan is cheap and takes a mutex.
    transport["unacked_restore_interval"] = settings.reliability.unacked_restore_interval_s
    transport["unacked_restore_throttle"] = 1
    return {
        "broker_url": settings.redis.resolved_broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        # Celery's default (100 attempts) makes a worker exit during a long broker outage;
        # it keeps trying instead, and its shards stay leased or come back as usual.
        "broker_connection_max_retries": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": settings.redis.shard_queue,
        # The names Celery gives a queue a message is sent to by name (direct exchange of
        # the same name), so producers' messages land in them.
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in consumed_queues(settings)
        ],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": beat_schedule(settings),
        "beat_schedule_filename": str(settings.worker.beat_schedule_path),
        "timezone": "UTC",
    }
