"""The FastAPI application: routers, error handlers, middleware and the resource lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from api.body_limit import BodyLimitMiddleware
from api.errors import install_error_handlers
from api.metrics import Metrics, MetricsMiddleware
from api.resources import Resources
from api.routers import batches, files, health, models, results
from jobs.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` (tests, the CLI) overrides the environment's."""
    resolved = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = await to_thread.run_sync(Resources.open, resolved)
        app.state.resources = resources
        app.state.metrics.registry.register(resources.collector)
        await to_thread.run_sync(resources.resume_intake)
        try:
            yield
        finally:
            app.state.metrics.registry.unregister(resources.collector)
            await to_thread.run_sync(resources.close)

    app = FastAPI(
        title="kvbatch",
        summary="An OpenAI-compatible Batch API over the kvbatch engine.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.metrics = Metrics.create()
    install_error_handlers(app)
    for module in (files, batches, results, models, health):
        app.include_router(module.router)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=resolved.api.max_json_body_bytes, exempt_paths=("/v1/files",)
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
