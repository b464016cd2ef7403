"""``kvbatch serve``: the Batch API under uvicorn, configured from ``KVBATCH_*``."""

from __future__ import annotations

import argparse

from infra.arg_types import port_number
from infra.failures import require_redis


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve the OpenAI-compatible Batch API")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from api.server import serve
    from jobs.settings import Settings

    settings = Settings()
    require_redis(settings.redis.redis_url, settings.redis.redis_sentinel_master)
    serve(host=args.host, port=args.port, settings=settings)
    return 0
