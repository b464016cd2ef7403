"""What the local stack is asked to run (kept apart from :mod:`infra.stack` so the command
parsers can name the defaults without importing the service code; the worker's metrics port
is the settings' own default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jobs.settings_sections import WorkerSection

DEFAULT_MODEL = "smollm2-135m-instruct"
# The worker's Prometheus endpoint, on loopback (KVBATCH_METRICS_PORT overrides it).
WORKER_METRICS_PORT: int = WorkerSection.model_fields["metrics_port"].default


@dataclass(slots=True)
class StackConfig:
    var_dir: Path = Path("var")
    api_port: int = 8000
    flower_port: int | None = 5555  # None: no Flower
    metrics_port: int = WORKER_METRICS_PORT  # the worker's Prometheus endpoint, loopback
    model: str = DEFAULT_MODEL
    concurrency: int | None = None  # None: the worker derives it from its engine
    ready_timeout_s: float = 300.0
    env: dict[str, str] = field(default_factory=dict)  # KVBATCH_* on top of os.environ
