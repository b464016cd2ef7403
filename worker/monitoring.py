"""Engine statistics where operators look: a Redis hash per worker, Prometheus, Celery.

P:workers:{hostname}   hash, refreshed every ``interval_s``, expires when the worker dies
P:registry:{hostname}  what it serves (jobs/state/worker_registry.py), the same heartbeat
:{metrics_port}/metrics  Prometheus text, read from the host on each scrape
celery inspect stats   the same numbers under "kvbatch" (Flower's worker page shows them)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from jobs.state.worker_registry import WorkerInfo, WorkerRegistry

log = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, Any]]

_GAUGES = {
    "num_running": "Requests running in the engine",
    "num_waiting": "Requests waiting for the engine's scheduler",
    "num_pending": "Requests submitted by shard tasks and not yet finished",
    "kv_cache_usage": "Fraction of KV-cache blocks in use",
    "generated_tokens_per_s": "Generated tokens per second over the recent steps",
    "engine_capacity": "Requests one engine step can hold (max_num_seqs)",
    "engine_occupancy": "Requests in the engine's steps / capacity, over the recent steps",
    "engine_occupancy_now": "Requests in the engine's last step / capacity",
    "intake_outstanding": "Lines of the shards this worker holds, not answered yet",
    "intake_watermark": "Outstanding lines below which the worker takes another shard",
    "intake_shards_held": "Shards this worker holds (running or being read)",
    "acceptance_rate": "Speculative decoding: accepted drafts / verified drafts",
    "mean_accepted_length": "Speculative decoding: tokens per verifying request-step",
}
_COUNTERS = {
    "num_generated_tokens": "Tokens generated",
    "num_prompt_tokens": "Prompt tokens computed",
    "num_steps": "Engine steps",
    "num_multi_batch_steps": "Engine steps holding requests of two or more batches",
    "num_batches_served": "Batches this worker has run shards of",
    "num_finished_requests": "Requests finished",
    "num_preemptions": "Requests preempted for KV-cache space",
    "engine_busy_s": "Seconds the engine spent in steps",
    "engine_idle_s": "Seconds the engine had no request in flight",
    "engine_idle_with_queued_work_s": "Seconds the engine had no request while shards waited "
    "in the queue",
    "engine_request_seconds": "Requests in each step times its seconds, summed (occupancy: "
    "rate / capacity)",
    "intake_shards_taken": "Shard messages this worker has taken from the queue",
    "num_draft_tokens": "Speculative drafts verified by the target model",
    "num_accepted_tokens": "Speculative drafts the target model accepted",
}


class _HostCollector(Collector):
    """The host's numbers, labelled with the model and the device so that one dashboard
    tells the workers of a fleet apart."""

    def __init__(self, snapshot: Snapshot, model: str, device: str) -> None:
        self._snapshot = snapshot
        self._labels = [model, device]

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._snapshot()
        labels = ["model", "device"]
        values = self._labels
        for name, doc in _GAUGES.items():
            gauge = GaugeMetricFamily(f"kvbatch_worker_{name}", doc, labels=labels)
            gauge.add_metric(values, stats.get(name, 0))
            yield gauge
        for name, doc in _COUNTERS.items():
            counter = CounterMetricFamily(f"kvbatch_worker_{name}", doc, labels=labels)
            counter.add_metric(values, stats.get(name, 0))
            yield counter


class StatsPublisher:
    def __init__(
        self,
        snapshot: Snapshot,
        client: redis.Redis,
        key: str,
        *,
        interval_s: float = 2.0,
        metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
        model: str = "",
        device: str = "",
        registration: tuple[WorkerRegistry, WorkerInfo] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._redis: Any = client
        self._key = key
        self._interval_s = interval_s
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        self._model = model
        self._device = device
        self._registration = registration
        self._ttl_s = int(interval_s * 3) + 10
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-publisher", daemon=True)

    def start(self) -> None:
        if self._metrics_port:  # 0: off
            self._serve_metrics(self._metrics_port)
        if self._registration is not None:  # serving from now on, not from the first tick
            registry, info = self._registration
            registry.register(info, self._ttl_s)
        self._thread.start()

    def _serve_metrics(self, port: int) -> None:
        """Serve ``/metrics``; a port another worker on this machine holds is not fatal."""
        registry = CollectorRegistry()
        registry.register(_HostCollector(self._snapshot, self._model, self._device))
        try:
            start_http_server(port, addr=self._metrics_host, registry=registry)
        except OSError as exc:
            log.warning(
                "worker metrics are off: %s:%d is taken (%s); give each worker its own "
                "KVBATCH_METRICS_PORT",
                self._metrics_host,
                port,
                exc.strerror,
            )
            return
        log.info("worker metrics on http://%s:%d/metrics", self._metrics_host, port)

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(self._interval_s + 5)
        self._redis.delete(self._key)
        if self._registration is not None:
            registry, info = self._registration
            registry.unregister(info.hostname)

    def publish(self) -> None:
        stats = self._snapshot()
        flat = {k: str(v) for k, v in stats.items() if isinstance(v, int | float)}
        with self._redis.pipeline() as pipe:
            pipe.hset(self._key, mapping=flat)
            pipe.expire(self._key, self._ttl_s)
            pipe.execute()
        if self._registration is not None:
            registry, info = self._registration
            registry.register(info, self._ttl_s)

    def _run(self) -> None:
        while not self._closing.wait(self._interval_s):
            try:
                self.publish()
            except Exception:
                log.exception("publishing worker stats failed")
