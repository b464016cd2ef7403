"""Everything one worker process holds: Redis, storage, the engine host, the shard runner,
the shard intake.

Built once per process, in the worker's bootstep (worker/bootstep.py) or lazily by the first
task that needs it, never in ``worker_process_init`` (loading a model takes too long there).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from engine.llm_engine import LLMEngine
from jobs.connections import (
    check_redis_policies,
    end_ride_out,
    open_dispatcher,
    open_redis,
    open_storage,
)
from jobs.pipeline.admission import priority_of
from jobs.pipeline.fair_share import open_fair_queues
from jobs.pipeline.finalize import BatchFinalizer
from jobs.pipeline.watchdog import ShardWatchdog
from jobs.settings import Settings, get_settings
from jobs.state.checkpoints import CommitPolicy
from jobs.state.shard_ledger import ShardLedger, StopReason
from jobs.state.store import JobStore
from jobs.state.worker_registry import WorkerInfo, WorkerRegistry
from worker.adapter_table import preload_adapters
from worker.engine_host import EngineHost
from worker.faults import FaultInjectingEngine
from worker.intake import ShardIntake
from worker.monitoring import StatsPublisher
from worker.queue_probe import QueueProbe
from worker.settings import served_name, worker_adapters, worker_engine_config
from worker.shard_runner import ShardLimits, ShardRunner

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: Settings, hostname: str) -> None:
        self.settings = settings
        check_redis_policies(settings)
        self.redis = open_redis(settings)
        self.store = JobStore(self.redis, settings.redis.key_prefix)
        self.ledger = ShardLedger(self.redis, self.store)
        self.storage = open_storage(settings.storage)
        self.finalizer = BatchFinalizer(
            self.store,
            self.ledger,
            self.storage,
            lock_ttl_s=settings.reliability.finalize_lock_s,
            max_line_bytes=settings.limits.max_line_bytes,
        )
        self.dispatcher = open_dispatcher(settings)
        self.fair = open_fair_queues(settings, self.redis, self.dispatcher)  # tenants' turns
        # Twice the visibility timeout: the broker brings back a dead worker's messages
        # after one; only a message lost outright stays silent that long.
        self.watchdog = ShardWatchdog(
            self.store,
            self.ledger,
            self.dispatcher,
            silence_s=2 * settings.reliability.visibility_timeout_s,
        )
        self.engine_config = worker_engine_config(settings)
        # The pool's size and the consumer's wake-up are set by the consumer's bootstep.
        self.intake = ShardIntake(
            self.engine_config.max_num_seqs, settings.worker.shard_threads_or_default()
        )
        self.served_name = served_name(settings)
        self.queue_probe = QueueProbe(  # this worker's own shard queue
            settings.redis.resolved_broker_url,
            settings.model_router().queue_of(self.served_name),
            settings.redis.broker_transport_options(),
        )
        self.host = EngineHost(
            self._load_engine,
            stop_checker=self._stop_reasons,
            queue_depth=self.queue_probe,
            max_pending=settings.worker.max_pending_requests,
            stop_poll_s=settings.worker.stop_poll_s,
            fair_order=settings.worker.fair_engine_order,
        )
        self.runner = ShardRunner(
            self.store,
            self.ledger,
            self.storage,
            self.finalizer,
            self.host,
            ShardLimits(
                max_deliveries=settings.reliability.max_shard_deliveries,
                lease_s=settings.reliability.shard_lease_s,
                max_line_bytes=settings.limits.max_line_bytes,
                commit=CommitPolicy(
                    settings.reliability.shard_commit_lines,
                    settings.reliability.shard_commit_interval_s,
                ),
            ),
            adapters=worker_adapters(settings),
        )
        self.publisher = StatsPublisher(
            self.snapshot,
            self.redis,
            self.store.key("workers", hostname),
            interval_s=settings.worker.stats_interval_s,
            metrics_port=settings.worker.metrics_port,
            metrics_host=settings.worker.metrics_host,
            model=self.served_name,
            device=str(self.engine_config.torch_device),
            registration=(
                WorkerRegistry(self.redis, settings.redis.key_prefix),
                self._info(hostname),
            ),
        )

    def _info(self, hostname: str) -> WorkerInfo:
        """What this worker announces it serves (``GET /v1/models`` counts them)."""
        config = self.engine_config
        return WorkerInfo(
            hostname=hostname,
            model=self.served_name,
            device=str(config.torch_device),
            max_num_seqs=config.max_num_seqs,
            max_model_len=config.max_model_len,
            adapters=sorted(self.runner.adapters),
        )

    def snapshot(self) -> dict[str, Any]:
        """The engine's, the host's and the intake's numbers, for every place stats go."""
        return {**self.host.snapshot(), **self.intake.snapshot()}

    def _load_engine(self) -> LLMEngine:
        config = self.engine_config
        engine: LLMEngine
        if self.settings.worker.fault_crash_marker:
            engine = FaultInjectingEngine(
                config, self.settings.worker.fault_crash_marker, self.settings.worker.fault_crash_at
            )
        else:
            engine = LLMEngine(config)
        preload_adapters(engine, self.runner.adapters)
        return engine

    def forward_if_misrouted(self, batch_id: str, shard_index: int) -> bool:
        """Send a shard of another model's batch to its own model's queue instead of running
        it on this engine (a message put in the wrong queue: by hand, or queued before the
        deployment had a queue per model); True when it was forwarded."""
        batch = self.store.load_batch(batch_id)
        if batch is None or not batch.model:
            return False  # nothing to run: the runner finds that out
        if self.dispatcher.router.route(batch.model).base_model == self.served_name:
            return False
        self.dispatcher.dispatch(batch_id, shard_index, priority_of(batch.metadata), batch.model)
        return True

    def _stop_reasons(self, batch_ids: set[str]) -> dict[str, str]:
        """Which of ``batch_ids`` must stop now (ended, cancelling, past their window)."""
        reasons: dict[str, str] = {}
        for batch_id in batch_ids:
            batch = self.store.load_batch(batch_id)
            if batch is None:
                reasons[batch_id] = StopReason.CANCELLED.value
                continue
            reason = StopReason.of_status(batch.status) or self.finalizer.stop_reason(batch)
            if reason is StopReason.EXPIRED:
                self.ledger.request_stop(batch.id, reason)  # the finalizer then ends it expired
            if reason is not None:
                reasons[batch_id] = reason.value
        return reasons

    def start(self) -> None:
        self.host.start()
        self.publisher.start()

    def hand_back_after(self, grace_s: float) -> None:
        """The worker is stopping: after ``grace_s`` close the engine, so that the shards
        still running end ``interrupted`` and go back to the queue (worker/tasks.py)."""
        timer = threading.Timer(grace_s, self._hand_back)
        timer.daemon = True
        timer.start()

    def _hand_back(self) -> None:
        log.warning("shutdown grace over: handing back the shards still running")
        self.host.close()

    def close(self) -> None:
        """Stop the engine first, then tidy up in Redis without riding out an outage.

        Redis may already be gone (``kvbatch up`` stops its own Redis right behind the
        worker): the tidy-up (stats key, registry entry) is best effort, since both expire on
        their own, and must neither wait ``redis_ride_out_s`` per command nor keep the
        engine's threads alive by raising before they are stopped.
        """
        self.host.close()
        end_ride_out(self.redis)  # the stats thread may be riding one out right now
        for part in (self.publisher, self.queue_probe, self.dispatcher, self.storage, self.redis):
            try:
                part.close()
            except Exception as exc:
                log.warning("closing %s failed: %s", type(part).__name__, exc)


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime(hostname: str | None = None) -> WorkerRuntime:
    """This process's runtime, started on first use (loads the engine once)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            name = hostname or f"kvbatch-{os.getpid()}@{socket.gethostname()}"
            runtime = WorkerRuntime(get_settings(), name)
            runtime.start()
            _runtime = runtime
        return _runtime


def current_runtime() -> WorkerRuntime | None:
    """The runtime if one is running (stats and shutdown must not start one)."""
    return _runtime


def shutdown_runtime() -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None
