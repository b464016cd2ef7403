"""The service's state on the API's ``/metrics``, read from Redis at each scrape.

HTTP counters say how the API is used; these say how the service is doing: batches by
status, shards waiting in the broker by priority and how long the oldest has waited, lines
and tokens per model and tenant over finished batches, and webhook delivery attempts per
tenant (jobs/state/service_stats.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobs.state.service_stats import WEBHOOK_OUTCOMES, FinishedStats, QueueProbe, WebhookStats
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore

log = logging.getLogger(__name__)

# Metric names, for the dashboard test and whoever writes queries.
SERVICE_METRICS = (
    "kvbatch_batches",
    "kvbatch_queued_shards",
    "kvbatch_oldest_queued_shard_age_seconds",
    "kvbatch_lines_total",
    "kvbatch_tokens_total",
    "kvbatch_batches_finished_total",
    "kvbatch_batch_duration_seconds_total",
    "kvbatch_webhook_attempts_total",
)


# The counters over finished batches: name, help, the labels after model and tenant.
_FINISHED_FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "kvbatch_lines",
        "Lines of finished batches, by outcome (completed: an answer; failed: an error line).",
        ("outcome",),
    ),
    (
        "kvbatch_tokens",
        "Tokens of finished batches: input (cached included), cached, output.",
        ("kind",),
    ),
    ("kvbatch_batches_finished", "Batches that ended, by final status.", ("status",)),
    (
        "kvbatch_batch_duration_seconds",
        "Seconds from in_progress to the end, summed over finished batches.",
        (),
    ),
)


class ServiceCollector(Collector):
    def __init__(self, store: JobStore, probe: QueueProbe | None, queues: list[str]) -> None:
        self._store = store
        self._finished = FinishedStats(store)
        self._webhooks = WebhookStats(store)
        self._probe = probe
        self._queues = queues

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._collect()
        except redis.RedisError as exc:  # the scrape still answers, with the HTTP metrics
            log.warning("service metrics unavailable: Redis unreachable (%s)", exc)

    def _collect(self) -> Iterator[Metric]:
        counts = self._store.batch_status_counts()
        batches = GaugeMetricFamily("kvbatch_batches", "Batches by status.", labels=["status"])
        for status in BatchStatus:
            batches.add_metric([status.value], counts.get(status.value, 0))
        yield batches
        yield from self._queue_metrics()
        yield from self._finished_metrics()
        yield self._webhook_metrics()

    def _queue_metrics(self) -> Iterator[Metric]:
        if self._probe is None:
            return
        queued = GaugeMetricFamily(
            "kvbatch_queued_shards",
            "Shard messages waiting in the broker, by queue and priority (0 first).",
            labels=["queue", "priority"],
        )
        oldest = GaugeMetricFamily(
            "kvbatch_oldest_queued_shard_age_seconds",
            "How long the oldest waiting shard message has waited (0 when none waits).",
            labels=["queue"],
        )
        now = time.time()
        for queue in self._queues:
            depth = self._probe.depth(queue, now)
            for priority, num in depth.queued.items():
                queued.add_metric([queue, str(priority)], num)
            oldest.add_metric([queue], depth.oldest_age_s or 0.0)
        yield queued
        yield oldest

    def _finished_metrics(self) -> Iterator[Metric]:
        lines, tokens, finished, duration = (
            CounterMetricFamily(name, text, labels=["model", "tenant", *by])
            for name, text, by in _FINISHED_FAMILIES
        )
        for (model, tenant), values in self._finished.totals().values.items():
            for outcome in ("completed", "failed"):
                lines.add_metric([model, tenant, outcome], values.get(outcome, 0))
            for kind in ("input", "cached", "output"):
                tokens.add_metric([model, tenant, kind], values.get(f"{kind}_tokens", 0))
            for name, value in values.items():
                if name.startswith("batches_"):
                    finished.add_metric([model, tenant, name.removeprefix("batches_")], value)
            duration.add_metric([model, tenant], values.get("duration_s", 0))
        yield from (lines, tokens, finished, duration)

    def _webhook_metrics(self) -> Metric:
        attempts = CounterMetricFamily(
            "kvbatch_webhook_attempts",
            "Webhook delivery attempts by tenant and outcome (delivered; retried: failed, "
            "tried again later; given_up: failed, the last try).",
            labels=["tenant", "outcome"],
        )
        totals = self._webhooks.totals()
        for tenant in sorted({tenant for tenant, _ in totals}):
            for outcome in WEBHOOK_OUTCOMES:
                attempts.add_metric([tenant, outcome], totals.get((tenant, outcome), 0))
        return attempts
