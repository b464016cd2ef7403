"""The Celery application of the kvbatch workers (``celery -A worker.app worker``).

Its configuration lives in worker/celeryconfig.py; its tasks in worker/tasks.py; the engine
each worker process holds starts in the bootstep of worker/bootstep.py, beside the gate
on its shard intake.
"""

from __future__ import annotations

from celery import Celery

from worker import outage_log  # noqa: F401 (connects its logging signal)
from worker.bootstep import EngineBootstep, IntakeGate
from worker.celeryconfig import celery_config
from worker.settings import WorkerSettings, get_worker_settings

celery_app = Celery(
    "kvbatch", set_as_current=True, include=["worker.tasks", "worker.webhook_tasks"]
)
celery_app.steps["worker"].add(EngineBootstep)
celery_app.steps["consumer"].add(IntakeGate)


def configure(settings: WorkerSettings) -> None:
    """(Re)apply settings, e.g. those ``run_worker`` installed from its command line.

    The beat schedule's folder is made here, not where beat starts: ``celery worker --beat``
    started by Celery's own command line never passes through ``run_worker``, and beat's
    shelve crashes on a missing folder (as it did on a fresh clone, where ``var/`` is absent).
    """
    settings.beat_schedule_path.parent.mkdir(parents=True, exist_ok=True)
    celery_app.conf.update(celery_config(settings))


configure(get_worker_settings())
