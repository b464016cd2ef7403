"""``kvbatch up``: the whole service on this machine until Ctrl-C or SIGTERM.

Ctrl-C and SIGTERM both lead to the same clean stop of everything ``up`` started (see
:mod:`infra.stack`); a child that dies on its own is restarted with backoff and the restart
is logged (see :mod:`infra.supervision`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from infra.arg_types import port_number, positive_int
from infra.stack_config import DEFAULT_MODEL, WORKER_METRICS_PORT, StackConfig

if TYPE_CHECKING:
    from rich.console import Console

    from infra.stack import LocalStack


def startup_errors() -> tuple[type[Exception], ...]:
    """What a stack start raises for a user to read (imported late: they pull in the services)."""
    from engine.model_fetch import ModelFetchError
    from infra.harness.readiness import NotReadyError
    from infra.harness.redis_server import RedisServerError
    from infra.stack import StackError

    return (StackError, RedisServerError, NotReadyError, ModelFetchError)


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``up`` and ``demo``: where the stack keeps its state, which model."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model directory or known name")
    parser.add_argument(
        "--var-dir", type=Path, default=Path("var"), help="logs, storage, Redis data (var/)"
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        help="most shards the worker holds at once (default: from the engine's capacity)",
    )


def add_up_parser(subparsers: argparse._SubParsersAction) -> None:
    summary = "run Redis (if none answers), the API, a worker and Flower on this machine"
    parser = subparsers.add_parser(
        "up",
        help=summary,
        description=summary + ". Every port is on 127.0.0.1.",
        epilog=(
            "default ports: API 8000, Flower 5555, Redis 6379 (KVBATCH_REDIS_URL; started "
            "here with its data under var/ when none answers), worker metrics "
            f"{WORKER_METRICS_PORT} (Prometheus, KVBATCH_METRICS_PORT)"
        ),
    )
    parser.add_argument("--port", type=port_number, default=8000, help="API port (default 8000)")
    parser.add_argument(
        "--flower-port", type=port_number, default=5555, help="Flower port (default 5555)"
    )
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
    add_stack_arguments(parser)
    parser.set_defaults(handler=_run_up)


class _Stop(Exception):
    """Raised in the main thread by SIGTERM, so it unwinds like Ctrl-C."""


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM into :class:`_Stop` and SIGINT into KeyboardInterrupt, then restore.

    SIGINT is installed explicitly, not left to Python's default: a shell starts a
    background job (``kvbatch up &`` in a script, a test runner started that way) with
    SIGINT ignored, Python keeps an ignored SIGINT as it found it, and ``up`` would then
    never stop on the Ctrl-C it promises to stop on.
    """

    def raise_stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous_term = signal.signal(signal.SIGTERM, raise_stop)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def ignore_signals() -> None:
    """While stopping, a second Ctrl-C must not abandon children half-stopped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _run_up(args: argparse.Namespace) -> int:
    from rich.console import Console

    from infra.stack import LocalStack

    console = Console(stderr=True)
    config = StackConfig(
        var_dir=args.var_dir,
        api_port=args.port,
        flower_port=None if args.no_flower else args.flower_port,
        model=args.model,
        concurrency=args.concurrency,
    )
    stack = LocalStack(config, console)
    with stop_on_signals():
        try:
            stack.start()
            _print_ready(stack, console)
            return _watch(stack, console)
        except startup_errors() as exc:
            console.print(f"[red]kvbatch up: {exc}")
            return 1
        except (KeyboardInterrupt, _Stop):
            console.print("stopping…")
            return 0
        finally:
            ignore_signals()
            stack.stop()


def _watch(stack: LocalStack, console: Console) -> int:
    """Block until a signal arrives (it raises), restarting any child that dies."""
    from infra.supervision import Supervisor

    supervisor = Supervisor(stack.processes, console)
    while True:
        supervisor.check()
        time.sleep(0.5)


def _print_ready(stack: LocalStack, console: Console) -> None:
    console.print(f"[green]kvbatch is up[/green]: API {stack.api_url}/v1")
    console.print(f"  API key:  {stack.api_key}   (OPENAI_API_KEY for the openai SDK)")
    console.print(f"  Redis:    {stack.settings.redis.redis_url}")
    if stack.flower_url:
        console.print(f"  Flower:   {stack.flower_url}  (basic auth {stack.flower_auth})")
    metrics_port = stack.env["KVBATCH_METRICS_PORT"]
    console.print(f"  metrics:  {stack.api_url}/metrics, http://127.0.0.1:{metrics_port}/metrics")
    console.print(f"  logs:     {stack.var_dir / 'logs'}")
    console.print("Ctrl-C stops everything kvbatch up started.")
    sys.stderr.flush()
