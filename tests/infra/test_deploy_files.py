"""The Docker and Kubernetes files, checked by parsing (no Docker engine or cluster here).

Every ``KVBATCH_*`` variable they set must be a setting the code reads, every command must
be one ``kvbatch`` parses, and the durability and safety settings the docs promise (Redis
AOF, GPU requests, Flower behind auth on loopback) must really be there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.routers.health import router as health_router
from engine.config import EngineConfig
from infra.cli import build_parser
from jobs.settings import Settings, env_names
from jobs.settings_sections import WorkerSection
from worker.settings import consumed_queues, served_name

INFRA = Path(__file__).resolve().parents[2] / "infra"
ROOT = INFRA.parent


def assert_kvbatch_command(argv: list[str]) -> None:
    """``argv`` (what follows the image's ``kvbatch`` entry point) parses as a subcommand."""
    build_parser().parse_args(argv)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def test_compose_redis_keeps_an_append_only_file(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_compose_kvbatch_services(compose: dict[str, Any]) -> None:
    known = env_names()
    services = compose["services"]
    kvbatch = {name: s for name, s in services.items() if s.get("image", "").startswith("kvbatch")}
    assert {"api", "worker", "beat", "flower"} <= set(kvbatch)
    for name, service in kvbatch.items():
        assert_kvbatch_command(service["command"])
        unknown = {k for k in service["environment"] if k.startswith("KVBATCH_")} - known
        assert not unknown, f"{name} sets variables no code reads: {unknown}"
        assert (ROOT / service["build"]["context"].removeprefix("../")).exists()
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_worker_reserves_a_gpu_and_flower_needs_auth(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    flower_env = compose["services"]["flower"]["environment"]
    assert flower_env["KVBATCH_FLOWER_BASIC_AUTH"].startswith("${KVBATCH_FLOWER_BASIC_AUTH:?")
    assert compose["services"]["worker"]["stop_grace_period"] == "2m"
    assert Settings().reliability.shutdown_grace_s + 20 <= 120, "the shards' grace fits in 2m"


def test_compose_creates_the_bucket_the_services_use(compose: dict[str, Any]) -> None:
    init = compose["services"]["minio-init"]
    assert "mc mb" in " ".join(init["entrypoint"])
    bucket = compose["services"]["api"]["environment"]["KVBATCH_S3_BUCKET"]
    assert init["environment"]["BUCKET"] == bucket
    assert compose["services"]["api"]["environment"]["KVBATCH_STORAGE_BACKEND"] == "s3"


def test_dockerfile_installs_the_pinned_torch_and_runs_kvbatch() -> None:
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    pin = re.search(r'"(torch==[\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None and pin.group(1) in dockerfile
    assert 'ENTRYPOINT ["kvbatch"]' in dockerfile
    assert re.search(r"apt-get install [^\n]*\bgcc\b", dockerfile), "CPU attention needs a compiler"
    for source in re.findall(r"^COPY (\S+) ", dockerfile, flags=re.MULTILINE):
        assert (ROOT / source).exists(), source
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, flags=re.MULTILINE)
    assert cmd is not None
    assert_kvbatch_command(yaml.safe_load(cmd.group(1)))


def test_k8s_settings_are_settings_the_code_reads(k8s: list[dict[str, Any]]) -> None:
    known = env_names()
    config = by_kind(k8s, "ConfigMap")["kvbatch-config"]["data"]
    secret = by_kind(k8s, "Secret")["kvbatch-secrets"]["stringData"]
    assert not (set(config) | set(secret)) - known
    assert Settings.from_env({**config, **secret}).storage.storage_backend == "s3"
    redis_host = re.match(r"redis://([^:/]+)", config["KVBATCH_REDIS_URL"])
    assert redis_host is not None and redis_host.group(1).endswith(".kvbatch-redis")


def test_k8s_redis_is_a_stateful_set_with_aof_on_a_volume(k8s: list[dict[str, Any]]) -> None:
    redis = by_kind(k8s, "StatefulSet")["kvbatch-redis"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["args"])
    assert "--appendonly yes" in args and "--appendfsync everysec" in args
    claim = redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert {"name": claim, "mountPath": "/data"} in container["volumeMounts"]
    assert redis["spec"]["serviceName"] in by_kind(k8s, "Service")


def test_k8s_deployments_run_real_commands(k8s: list[dict[str, Any]]) -> None:
    deployments = by_kind(k8s, "Deployment")
    assert {"kvbatch-api", "kvbatch-worker", "kvbatch-beat", "kvbatch-flower"} <= set(deployments)
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        for container in spec["template"]["spec"]["containers"]:
            assert container["image"].startswith("kvbatch:")
            assert_kvbatch_command(container["args"])
            refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
            assert refs == {"kvbatch-config", "kvbatch-secrets"}
    assert deployments["kvbatch-beat"]["spec"]["replicas"] == 1


def test_k8s_worker_requests_a_gpu(k8s: list[dict[str, Any]]) -> None:
    worker = by_kind(k8s, "Deployment")["kvbatch-worker"]["spec"]["template"]["spec"]
    resources = worker["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert worker["terminationGracePeriodSeconds"] >= 60
    # SIGTERM: the shards' grace, then a hand-back that needs a few seconds more.
    grace_s = Settings().reliability.shutdown_grace_s
    assert worker["terminationGracePeriodSeconds"] >= grace_s + 20


def test_k8s_services_select_their_pods_and_probes_exist(k8s: list[dict[str, Any]]) -> None:
    pods = {
        name: doc["spec"]["template"]["metadata"]["labels"]
        for kind in ("Deployment", "StatefulSet")
        for name, doc in by_kind(k8s, kind).items()
    }
    for name, service in by_kind(k8s, "Service").items():
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pods.values()), name
    assert by_kind(k8s, "Service")["kvbatch-flower"]["spec"]["type"] == "ClusterIP"
    api = by_kind(k8s, "Deployment")["kvbatch-api"]["spec"]["template"]["spec"]["containers"][0]
    routes = {getattr(route, "path", None) for route in health_router.routes}
    assert api["readinessProbe"]["httpGet"]["path"] in routes


def test_workers_everywhere_take_their_shard_intake_from_the_engine(
    compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    """No launcher pins a thread count: each worker derives it (and when to take the next
    shard) from its engine, so batches are full out of the box."""
    k8s_worker = by_kind(k8s, "Deployment")["kvbatch-worker"]["spec"]["template"]["spec"]
    commands = [compose["services"]["worker"]["command"], k8s_worker["containers"][0]["args"]]
    for argv in commands:
        assert "--concurrency" not in argv
        assert build_parser().parse_args(argv).concurrency is None
    assert build_parser().parse_args(["up"]).concurrency is None
    settings = Settings().worker
    assert settings.shard_threads_or_default() == settings.engine.max_num_seqs // 4
    small = settings.model_copy(update={"engine": EngineConfig(model="m", max_num_seqs=8)})
    assert small.shard_threads_or_default() == 4
    assert settings.model_copy(update={"shard_threads": 3}).shard_threads_or_default() == 3


def test_each_worker_pool_consumes_its_own_served_models_queue(
    compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    """Two pools for two models, in Compose and in Kubernetes: each serves a name the API
    accepts (KVBATCH_MODELS) and so consumes that model's shard queue, no two alike."""
    compose_models = compose["x-kvbatch-env"]["KVBATCH_MODELS"]
    k8s_models = by_kind(k8s, "ConfigMap")["kvbatch-config"]["data"]["KVBATCH_MODELS"]
    services = compose["services"].values()
    compose_workers = [s["command"] for s in services if s.get("command", [""])[0] == "worker"]
    deployments = by_kind(k8s, "Deployment")
    k8s_workers = [
        d["spec"]["template"]["spec"]["containers"][0]["args"]
        for name, d in deployments.items()
        if name.startswith("kvbatch-worker")
    ]
    pools = {"compose": (compose_models, compose_workers), "k8s": (k8s_models, k8s_workers)}
    for where, (models, commands) in pools.items():
        queues = []
        for argv in commands:
            args = build_parser().parse_args(argv)
            settings = Settings.from_flat(
                {
                    "worker_model": args.model,
                    "worker_served_name": args.served_name,
                    "models": models,
                }
            )
            assert served_name(settings) in settings.serving.models, (where, argv)
            queues.append(consumed_queues(settings)[1])
        assert len(commands) == 2 and len(set(queues)) == 2, (where, queues)


def test_worker_metrics_are_on_in_every_launcher(
    compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    """``kvbatch worker`` alone serves its engine metrics on loopback; the Compose and
    Kubernetes workers serve them to their private network on the port Prometheus scrapes
    (``kvbatch up`` and ``demo``: tests/infra/test_up.py)."""
    defaults = WorkerSection.model_fields
    assert (defaults["metrics_port"].default, defaults["metrics_host"].default) == (
        9300,
        "127.0.0.1",
    )
    services = compose["services"]
    pools = [s for s in services.values() if s.get("command", [""])[0] == "worker"]
    assert len(pools) == 2
    for pool in pools:
        assert int(pool["environment"]["KVBATCH_METRICS_PORT"]) == 9300
    workers = [d for n, d in by_kind(k8s, "Deployment").items() if n.startswith("kvbatch-worker")]
    assert len(workers) == 2
    for deployment in workers:
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        port = int(env["KVBATCH_METRICS_PORT"])
        assert port == int(template["metadata"]["annotations"]["prometheus.io/port"]) == 9300
        assert port in {p["containerPort"] for p in container["ports"]}
