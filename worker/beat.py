"""The periodic schedule: ``kvbatch.expire_batches`` ends batches past their window.

Run beat once per deployment (``kvbatch worker --beat`` embeds it, or
:func:`worker.main.run_beat`);
two beats only sweep twice, which the finalizer's lock makes harmless.
"""

from __future__ import annotations

from typing import Any

from jobs.settings import Settings

EXPIRE_TASK = "kvbatch.expire_batches"
WEBHOOK_COLLECT_TASK = "kvbatch.webhooks.collect"
WEBHOOK_DELIVER_TASK = "kvbatch.webhooks.deliver"


def beat_schedule(settings: Settings) -> dict[str, Any]:
    return {
        "kvbatch-expire-batches": {
            "task": EXPIRE_TASK,
            "schedule": settings.worker.expiry_interval_s,
            # Priority 0 is served first on Redis: the sweep never waits behind queued shards.
            # A sweep still queued when the next is due is dropped (a worker whose engine
            # is full takes no message at all, and would otherwise run a backlog of them).
            "options": {
                "queue": settings.redis.shard_queue,
                "priority": 0,
                "expires": settings.worker.expiry_interval_s,
            },
        },
        "kvbatch-collect-webhooks": {
            "task": WEBHOOK_COLLECT_TASK,
            "schedule": settings.webhooks.webhook_poll_s,
            "options": {
                "queue": settings.redis.shard_queue,
                "priority": 0,
                "expires": settings.webhooks.webhook_poll_s,
            },
        },
    }
