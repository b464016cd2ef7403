"""The Grafana dashboard and the Prometheus config under infra/monitoring/ ask only for metrics
that a real API and a real worker expose, and the compose file wires them in."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from infra.harness.redis_server import free_port
from infra.harness.service import REDIS_URL, make_settings, run_server
from worker.engine_host import EngineHost
from worker.monitoring import StatsPublisher

MONITORING = Path(__file__).resolve().parents[2] / "infra" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "kvbatch.json"
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
}


def exposed_names(text: str) -> set[str]:
    """Every series name the exposition can hold, samples or not (a counter with no label set
    yet still declares its family)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def dashboard_queries() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.fixture(scope="module")
def api_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prefix = f"dash-{secrets.token_hex(3)}"
    settings = make_settings("local", prefix, tmp_path_factory.mktemp("dash"), None)
    with run_server(settings) as server:
        httpx.get(f"{server.url}/health", timeout=5)  # one request: the HTTP histogram
        yield httpx.get(f"{server.url}/metrics", timeout=5).text


@pytest.fixture(scope="module")
def worker_metrics(tiny_model_dirs: dict[str, Path]) -> Iterator[str]:
    config = EngineConfig(model=str(tiny_model_dirs["llama"]), max_num_seqs=4)
    host = EngineHost(lambda: LLMEngine(config), stop_checker=lambda batches: {})
    host.start(timeout_s=60)
    port = free_port()
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    key = f"dash-{secrets.token_hex(4)}:workers:w"
    publisher = StatsPublisher(
        host.snapshot, client, key, metrics_port=port, model="llama", device="cpu"
    )
    publisher.start()
    try:
        yield httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        publisher.close()  # deletes its key
        host.close()
        client.close()


def test_every_dashboard_query_names_a_metric_that_exists(
    api_metrics: str, worker_metrics: str
) -> None:
    exposed = exposed_names(api_metrics) | exposed_names(worker_metrics)
    queries = dashboard_queries()
    assert len(queries) >= 10
    for expr in queries:
        names = set(re.findall(r"\bkvbatch_[a-z0-9_]+", expr))
        assert names, f"a query that names no kvbatch metric: {expr}"
        assert names <= exposed, f"{expr} names {names - exposed}, not exposed"


def test_the_dashboard_covers_what_an_operator_asks() -> None:
    text = " ".join(dashboard_queries())
    for metric in (
        "kvbatch_worker_num_generated_tokens_total",  # throughput
        "kvbatch_queued_shards",  # queue depth
        "kvbatch_worker_num_running",  # occupancy
        "kvbatch_worker_kv_cache_usage",  # KV usage
        "kvbatch_worker_num_preemptions_total",  # preemptions
        "kvbatch_batch_duration_seconds_total",  # batch durations
        "kvbatch_webhook_attempts_total",  # webhook deliveries
    ):
        assert metric in text, metric


def test_prometheus_and_grafana_are_wired_into_compose() -> None:
    root = MONITORING.parent
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (root / source).exists(), volume
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert jobs["kvbatch-api"]["static_configs"][0]["targets"] == ["api:8000"]
    worker_env = services["worker"]["environment"]
    (sd,) = jobs["kvbatch-worker"]["dns_sd_configs"]
    pools = {name for name, s in services.items() if s.get("command", [""])[0] == "worker"}
    assert set(sd["names"]) == pools == {"worker", "worker-qwen"}, "every pool is scraped"
    assert sd["port"] == int(worker_env["KVBATCH_METRICS_PORT"])
    assert worker_env["KVBATCH_METRICS_HOST"] == "0.0.0.0"
    assert "ports" not in services["worker"], "worker metrics stay inside the compose network"
