"""``kvbatch flower``: Flower on the workers' broker, on loopback, never without a password.

Flower can revoke tasks and shut workers down, so it refuses to start without
``KVBATCH_FLOWER_BASIC_AUTH=user:password`` and binds 127.0.0.1 unless told otherwise.

Flower exempts ``/metrics`` from its own auth by design (anyone reaching the port reads
every task name, worker and queue); :func:`require_auth_for_metrics` puts it behind the
same basic auth as the rest, so a Prometheus scrapes it with ``basic_auth`` credentials.
``/healthcheck`` (a bare "OK") stays open for liveness probes.
"""

from __future__ import annotations

import argparse
import sys

from celery import Celery

from infra.arg_types import port_number
from jobs.settings import Settings, use_settings
from jobs.settings_sections import FlowerSection
from worker.celeryconfig import celery_config


def flower_argv(settings: FlowerSection) -> list[str]:
    """The Celery command line that runs Flower against the worker's app (and broker)."""
    if not settings.basic_auth or ":" not in settings.basic_auth:
        raise ValueError(
            "Flower needs KVBATCH_FLOWER_BASIC_AUTH=user:password (it can revoke tasks "
            "and shut down workers, so it never runs without auth)"
        )
    return [
        "flower",
        f"--address={settings.address}",
        f"--port={settings.port}",
        f"--basic-auth={settings.basic_auth}",
    ]


def require_auth_for_metrics() -> None:
    """Serve Flower's ``/metrics`` only to authenticated requests (a 401 otherwise)."""
    import tornado.web
    from flower import urls
    from flower.views.monitor import Metrics

    class AuthenticatedMetrics(Metrics):
        @tornado.web.authenticated
        async def get(self) -> None:
            await super().get()

    # Flower builds its application from this very list (flower/app.py) when it starts.
    for position, entry in enumerate(urls.handlers):
        if isinstance(entry, tuple) and entry[1] is Metrics:
            urls.handlers[position] = (entry[0], AuthenticatedMetrics, *entry[2:])


def add_flower_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flower", help="Flower (task monitor) behind basic auth, on the workers' broker"
    )
    parser.add_argument("--address", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, help="port (default 5555)")
    parser.set_defaults(handler=_run_flower)


def _run_flower(args: argparse.Namespace) -> int:
    chosen = (("flower_address", args.address), ("flower_port", args.port))
    settings = Settings().updated(**{name: value for name, value in chosen if value})
    try:
        argv = flower_argv(settings.flower)
    except ValueError as exc:
        print(f"kvbatch flower: {exc}", file=sys.stderr)
        return 2
    use_settings(settings)
    require_auth_for_metrics()
    flower_app(settings).start(argv=argv)
    return 0


def flower_app(settings: Settings) -> Celery:
    """A Celery app with the workers' configuration (broker, transport options, events,
    queues) and none of their tasks or bootsteps: Flower watches the broker and the workers'
    events and never runs a task, so it does not import worker.app, whose engine bootstep
    pulls in torch and transformers (Flower took ~5 s to start with them, ~1.5 s without)."""
    app = Celery("kvbatch", set_as_current=True)
    app.conf.update(celery_config(settings))
    return app
