"""Liveness and Prometheus metrics (no key: scraped by infrastructure).

``/metrics`` holds tenant names and counts (lines, tokens), never request contents: serve
it only where the operator's network reaches, as the deployment files do.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import ResourcesDep
from api.errors import error_response

router = APIRouter(tags=["health"])


@router.get("/health")
def health(resources: ResourcesDep) -> Response:
    """OK when Redis answers; 503 otherwise so a load balancer stops sending traffic."""
    try:
        resources.store.ping()
    except Exception:
        return error_response(503, "redis unreachable", error_type="server_error")
    return Response('{"status":"ok"}', media_type="application/json")


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
