"""Run the API under uvicorn (``kvbatch serve`` calls :func:`serve`)."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from jobs.settings import Settings, get_settings


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    """Serve until interrupted; one process, the event loop plus intake threads."""
    app = create_app(settings or get_settings())
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
