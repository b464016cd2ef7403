"""The worker bootstep that starts this process's engine before it consumes any shard.

A bootstep (not ``worker_process_init``) because loading a model takes longer than that
signal allows; its ``info`` adds the engine's numbers to ``celery inspect stats``.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.worker.control import inspect_command

from worker.runtime import current_runtime, get_runtime, shutdown_runtime


class EngineBootstep(bootsteps.StartStopStep):
    label = "kvbatch engine"

    def start(self, parent: Any) -> None:
        get_runtime(parent.hostname)

    def stop(self, parent: Any) -> None:
        shutdown_runtime()

    def info(self, parent: Any) -> dict[str, Any]:
        runtime = current_runtime()
        return {"kvbatch": runtime.host.snapshot() if runtime else {}}


@inspect_command(name="kvbatch_stats")  # type: ignore[untyped-decorator]
def kvbatch_stats(state: Any) -> dict[str, Any]:
    """``app.control.broadcast("kvbatch_stats", reply=True)``: this worker's engine stats."""
    runtime = current_runtime()
    return runtime.host.snapshot() if runtime else {}
