"""Everything the API holds open while it runs, built in the lifespan from settings."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import redis

from api.service_metrics import ServiceCollector
from jobs.connections import check_redis_policies, open_dispatcher, open_storage, redis_client
from jobs.pipeline.dispatch import ShardDispatcher
from jobs.pipeline.fair_share import open_fair_queues
from jobs.pipeline.intake import BatchIntake
from jobs.settings import Settings
from jobs.settings_sections import SENTINEL_SCHEME
from jobs.state.ids import BatchId
from jobs.state.service_stats import QueueProbe
from jobs.state.store import JobStore
from jobs.state.worker_registry import WorkerRegistry
from jobs.storage import Storage

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Resources:
    settings: Settings
    pool: redis.ConnectionPool
    store: JobStore
    storage: Storage
    dispatcher: ShardDispatcher
    intake: BatchIntake
    executor: ThreadPoolExecutor
    collector: ServiceCollector  # the service's state for /metrics
    registry: WorkerRegistry  # the live workers and what they serve

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        check_redis_policies(settings)
        master = settings.redis.redis_sentinel_master
        state = redis_client(settings.redis.redis_url, master, decode_responses=True)
        pool = state.connection_pool
        store = JobStore(state, settings.redis.key_prefix)
        storage = open_storage(settings.storage)
        dispatcher = open_dispatcher(settings)
        intake = BatchIntake(
            store,
            storage,
            dispatcher,
            settings.enforced_limits(),
            quotas=settings.api.tenant_quotas,
            fair=open_fair_queues(settings, redis.Redis(connection_pool=pool), dispatcher),
        )
        executor = ThreadPoolExecutor(settings.api.intake_threads, thread_name_prefix="intake")
        broker = settings.redis.resolved_broker_url
        probe = None
        if broker.startswith(("redis://", "rediss://", "unix://", SENTINEL_SCHEME)):
            client = redis_client(broker, master, decode_responses=True)
            probe = QueueProbe(client, settings.redis.resolved_broker_key_prefix)
        router = settings.model_router()
        queues = [router.queue_of(model) for model in sorted(settings.serving.models)]
        collector = ServiceCollector(store, probe, sorted(set(queues)))
        registry = WorkerRegistry(redis.Redis(connection_pool=pool), settings.redis.key_prefix)
        return cls(
            settings, pool, store, storage, dispatcher, intake, executor, collector, registry
        )

    def submit_intake(self, batch_id: BatchId) -> None:
        """Validate a batch on the intake threads, never on the event loop."""
        future = self.executor.submit(self.intake.run, batch_id)
        future.add_done_callback(_log_failure)

    def resume_intake(self) -> None:
        """Pick up batches a previous process accepted but did not finish validating."""
        for batch_id in self.store.validating_ids():
            self.submit_intake(batch_id)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)
        self.dispatcher.close()
        self.collector.close()
        self.storage.close()
        self.pool.disconnect()


def _log_failure(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("batch intake crashed", exc_info=exc)
