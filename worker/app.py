"""The Celery application of the kvbatch workers (``celery -A worker.app worker``).

Its configuration lives in worker/celeryconfig.py; its tasks in worker/tasks.py; the engine
each worker process holds starts in the bootstep of worker/bootstep.py, beside the gate
on its shard intake.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from jobs.settings import Settings, get_settings
from worker import outage_log  # noqa: F401 (connects its logging signal)
from worker.bootstep import EngineBootstep, IntakeGate
from worker.celeryconfig import celery_config

celery_app = Celery(
    "kvbatch", set_as_current=True, include=["worker.tasks", "worker.webhook_tasks"]
)
celery_app.steps["worker"].add(EngineBootstep)
celery_app.steps["consumer"].add(IntakeGate)


def configure(settings: Settings) -> None:
    """(Re)apply settings, e.g. those ``run_worker`` installed from its command line."""
    celery_app.conf.update(_app_config(settings))


def _app_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration of ``settings``.

    The beat schedule's folder is made here, not where beat starts: ``celery worker --beat``
    started by Celery's own command line never passes through ``run_worker``, and beat's
    shelve crashes on a missing folder (as it did on a fresh clone, where ``var/`` is absent).
    """
    settings.worker.beat_schedule_path.parent.mkdir(parents=True, exist_ok=True)
    return celery_config(settings)


# Read when Celery first needs its configuration, not when this module is imported.
celery_app.add_defaults(lambda: _app_config(get_settings()))
