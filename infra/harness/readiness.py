"""Waiting until a started service really serves: an HTTP 200, or a Celery worker's pong.

Each wait also watches the process it waits for, so a child that crashes at start-up fails
the wait at once with its log tail instead of after the whole timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from celery import Celery

from infra.harness.process import ManagedProcess


class NotReadyError(RuntimeError):
    """A service did not become ready; the message carries its log tail."""


def wait_until(
    check: Callable[[], bool], process: ManagedProcess, what: str, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        code = process.exit_code()
        if code is not None:
            raise NotReadyError(
                f"{process.name} exited with status {code} before {what}; "
                f"{process.log_path}:\n{process.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise NotReadyError(
                f"{process.name}: no {what} within {timeout_s:.0f}s; "
                f"{process.log_path}:\n{process.log_tail()}"
            )
        time.sleep(0.25)


def http_ok(url: str, auth: tuple[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, timeout=2.0, auth=auth).status_code == 200
    except httpx.HTTPError:
        return False


def ping_workers(
    broker_url: str,
    transport_options: dict[str, Any],
    destination: list[str] | None = None,
    timeout_s: float = 1.0,
) -> list[str]:
    """Names of the Celery workers that answered a ping on this broker."""
    app = Celery("kvbatch-ping", broker=broker_url, set_as_current=False)
    app.conf.update(broker_transport_options=transport_options, broker_connection_retry=False)
    try:
        replies = app.control.ping(destination=destination, timeout=timeout_s) or []
    except OSError:
        return []
    finally:
        app.close()
    return [name for reply in replies for name in reply]
