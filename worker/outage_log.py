"""While Redis is away, each retry cycle logs one line, not a traceback.

A worker keeps running through a Redis outage: its stats publisher, its stop watcher and
Celery's consumer each retry on their own cycle. A traceback per cycle says nothing the
first line does not and buries the log; this filter turns a record whose exception is an
unreachable Redis (or broker) into its message plus the reason.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.signals import after_setup_logger
from kombu.exceptions import OperationalError

OUTAGES: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    OperationalError,  # kombu's wrapper of the broker's connection errors
)


def _outage(exc: BaseException | None) -> BaseException | None:
    """The unreachable-Redis error behind ``exc`` (Celery wraps it: beat's SchedulingError)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OUTAGES):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class OutageFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        outage = _outage(record.exc_info[1] if record.exc_info else None)
        if outage is not None:
            # The first line only: beat also formats the stack into its message.
            first = record.getMessage().splitlines()[0]
            record.msg = f"{first} (Redis unreachable: {outage}; retrying)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def install(logger: logging.Logger) -> None:
    """Add the filter to each of ``logger``'s handlers (idempotent)."""
    for handler in logger.handlers:
        if not any(isinstance(f, OutageFilter) for f in handler.filters):
            handler.addFilter(OutageFilter())


@after_setup_logger.connect
def _install_on_setup(logger: logging.Logger, **kwargs: Any) -> None:
    install(logger)
