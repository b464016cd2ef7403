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
    OperationalError,
    ConnectionError,
)


class OutageFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OUTAGES):
            record.msg = f"{record.getMessage()} (Redis unreachable: {exc}; retrying)"
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
