"""The worker's bootsteps: the engine this process holds, and the gate on its shard intake.

``EngineBootstep`` (worker blueprint) starts the engine before the worker consumes any shard:
a bootstep, not ``worker_process_init``, because loading a model takes longer than that
signal allows; its ``info`` adds the engine's numbers to ``celery inspect stats``. It starts
after Celery's ``Beat`` step, so that ``--beat`` forks its process while this one has a single
thread (see :class:`EngineBootstep`).

``IntakeGate`` (consumer blueprint, after the task consumer, again after every reconnect)
makes the broker consumer ask the intake (worker/intake.py) before each fetch. It wraps the
Redis channel's ``can_consume``, the hook Celery's own ``worker_disable_prefetch`` uses, so
Celery's prefetch limit (one message per pool thread) still applies beneath it; a message
the gate holds back stays in the Redis queue, where any other worker can take it.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps, signals
from celery.worker.control import inspect_command

from jobs.pipeline.dispatch import RUN_SHARD_TASK
from worker.runtime import current_runtime, get_runtime, shutdown_runtime


class EngineBootstep(bootsteps.StartStopStep):
    """The engine of this worker process, with its threads and Redis connections.

    ``requires`` Beat: the embedded beat (``--beat``) is a forked process, and a fork copies
    every lock as it stands, held or not, but only the forking thread. Without this edge the
    boot order of the two steps follows the hash seed; when the engine came first, the
    engine's queue watcher could be holding its Redis pool's lock (it polls the queue every
    0.1 s) at the fork, and the beat child hung for good in kombu's after-fork cleanup of that
    channel (redis-py's pool ``reset()`` waits on the inherited lock): the worker was ready,
    but no periodic task was ever sent. Without ``--beat`` the Beat step does nothing.
    """

    label = "kvbatch engine"
    requires = ("celery.worker.components:Beat",)

    def start(self, parent: Any) -> None:
        get_runtime(parent.hostname)

    def stop(self, parent: Any) -> None:
        shutdown_runtime()

    def info(self, parent: Any) -> dict[str, Any]:
        runtime = current_runtime()
        return {"kvbatch": runtime.snapshot() if runtime else {}}


class IntakeGate(bootsteps.StartStopStep):
    label = "kvbatch shard intake"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        intake = get_runtime(c.hostname).intake
        intake.max_shards = c.pool.num_processes or intake.max_shards
        hub = c.hub
        if hub is not None:  # wake the consumer's event loop: fetch now, not at its next tick
            intake.on_open = lambda: hub.call_soon(_nothing)
        qos = c.task_consumer.channel.qos
        celery_can_consume = qos.can_consume
        qos.can_consume = lambda: intake.is_open() and celery_can_consume()


def _nothing() -> None:
    """What the woken event loop runs: it then polls the broker with the gate open."""


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    """SIGTERM (warm shutdown, which by itself waits for running tasks without limit):
    the shards still running after ``shutdown_grace_s`` are handed back."""
    runtime = current_runtime()
    if runtime is not None:
        runtime.hand_back_after(runtime.settings.reliability.shutdown_grace_s)


@signals.task_received.connect
def _on_task_received(request: Any, **_: Any) -> None:
    """In the consumer's thread, right after a fetch: the intake may close its gate.

    A retry waiting for its countdown is not counted: it is not running, and the gate must
    not stay shut on it for minutes (it counts once it runs).
    """
    runtime = current_runtime()
    if runtime is not None:
        is_shard = request.name == RUN_SHARD_TASK and not request.eta
        runtime.intake.received(request.id, is_shard=is_shard)


@signals.task_revoked.connect
def _on_task_revoked(request: Any, **_: Any) -> None:
    runtime = current_runtime()
    if runtime is not None:
        runtime.intake.finished(request.id)


@inspect_command(name="kvbatch_stats")  # type: ignore[untyped-decorator]
def kvbatch_stats(state: Any) -> dict[str, Any]:
    """``app.control.broadcast("kvbatch_stats", reply=True)``: this worker's engine stats."""
    runtime = current_runtime()
    return runtime.snapshot() if runtime else {}
