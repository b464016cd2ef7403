"""Failures a user can fix, said in one line: what is wrong and what to do.

The ``kvbatch`` command prints these instead of a traceback (``kvbatch --debug`` shows the
traceback); the checks here run before a service starts, so a missing Redis or model is
reported before uvicorn or Celery wrap it in their own start-up noise.
"""

from __future__ import annotations

from pathlib import Path

import redis

from jobs.connections import redis_client


class CommandFailed(Exception):
    """A failure whose message tells the user what to do; printed without a traceback."""


def require_redis(url: str, sentinel_master: str = "mymaster", timeout_s: float = 3.0) -> None:
    """Raise :class:`CommandFailed` unless Redis answers at ``url`` (the master, behind
    ``sentinel://`` URLs)."""
    options = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s, "retry": None}
    client = redis_client(url, sentinel_master, **options)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise CommandFailed(
            f"cannot reach Redis at {url} ({exc}): start redis-server, "
            "or set KVBATCH_REDIS_URL to a Redis that answers"
        ) from exc
    finally:
        client.close()


def require_weights(model_dir: Path) -> None:
    """Raise :class:`CommandFailed` unless ``model_dir`` holds safetensors weights."""
    if not any(model_dir.glob("*.safetensors")):
        raise CommandFailed(
            f"{model_dir} holds no *.safetensors weights: fetch the model "
            "(kvbatch fetch-model NAME) or point --model at a complete model directory"
        )


def describe(exc: BaseException) -> str:
    """One line for an exception that ended a command."""
    if isinstance(exc, CommandFailed):
        return str(exc)
    if isinstance(exc, redis.ConnectionError):
        return f"Redis is unreachable ({exc}): start it, or set KVBATCH_REDIS_URL"
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}"
    return f"{type(exc).__name__}: {exc} (kvbatch --debug COMMAND shows the traceback)"
