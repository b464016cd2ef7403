"""Webhook tasks: collect the events of ended batches, deliver each at least once.

``kvbatch.webhooks.collect`` runs on the beat schedule (``webhook_poll_s``) and queues one
``kvbatch.webhooks.deliver`` per new event. A delivery that fails is retried with backoff
(``webhook_backoff_s`` doubling up to ``webhook_backoff_max_s``, below the broker's
visibility timeout so that a waiting retry is never redelivered as well) until
``webhook_retry_for_s`` (at least 24 h) after the event was built. Nothing here runs on
the API's request path.
"""

from __future__ import annotations

import logging
import time

from celery import Task

from jobs.settings import get_settings
from jobs.state.service_stats import WebhookStats
from jobs.webhooks.delivery import deliver
from jobs.webhooks.events import WebhookOutbox
from worker.app import celery_app
from worker.beat import WEBHOOK_COLLECT_TASK, WEBHOOK_DELIVER_TASK
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


def _outbox() -> WebhookOutbox:
    return WebhookOutbox(get_runtime().store, get_settings().webhooks)


@celery_app.task(name=WEBHOOK_COLLECT_TASK, acks_late=True)
def collect_webhooks() -> int:
    """Queue a delivery for every batch that ended since the last run."""
    settings = get_settings()
    pending = _outbox().collect(time.time())
    for event_id in pending:
        deliver_webhook.apply_async(args=[event_id], queue=settings.redis.shard_queue, priority=0)
    return len(pending)


@celery_app.task(name=WEBHOOK_DELIVER_TASK, bind=True, acks_late=True, max_retries=None)
def deliver_webhook(self: Task, event_id: str) -> str:
    settings = get_settings().webhooks
    outbox = _outbox()
    event = outbox.load(event_id)
    if event is None or event.delivered:
        return "gone" if event is None else "delivered"
    attempt = deliver(event, settings)
    stats = WebhookStats(outbox.store)
    if attempt.delivered:
        outbox.mark_delivered(event.id, time.time())
        stats.record(event.tenant, "delivered")
        return "delivered"
    late = time.time() - event.first_at > settings.webhook_retry_for_s
    if not attempt.retry or late:
        stats.record(event.tenant, "given_up")
        log.error("webhook %s to %s given up: %s", event.id, event.url, attempt.detail)
        return "given_up"
    stats.record(event.tenant, "retried")
    log.warning("webhook %s to %s failed (%s); retrying", event.id, event.url, attempt.detail)
    countdown = min(
        settings.webhook_backoff_max_s, settings.webhook_backoff_s * 2**self.request.retries
    )
    raise self.retry(countdown=countdown)
