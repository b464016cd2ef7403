"""Which model a worker serves and which queues it consumes, from its settings alone."""

from __future__ import annotations

from pathlib import Path

from infra.cli import build_parser
from jobs.settings import Settings
from worker.celeryconfig import celery_config
from worker.settings import consumed_queues, served_name


def test_the_served_name_is_the_flag_else_the_models_entry_else_the_directory(
    tmp_path: Path,
) -> None:
    held = tmp_path / "weights-v2"
    models = {"chat": str(held), "other": str(tmp_path / "other")}
    chosen = Settings.from_flat({"worker_model": str(held), "models": models})
    assert served_name(chosen) == "chat"
    named = chosen.updated(worker_served_name="x")
    assert served_name(named) == "x"
    assert served_name(Settings.from_flat({"worker_model": str(held)})) == "weights-v2"


def test_a_worker_consumes_housekeeping_and_its_models_queue_only(tmp_path: Path) -> None:
    settings = Settings.from_flat(
        {
            "worker_model": str(tmp_path / "m"),
            "shard_queue": "kv.shards",
            "models": {"a": "/a", "b": "/b"},
        }
    )
    assert consumed_queues(settings) == ["kv.shards", "kv.shards.m"]
    queues = celery_config(settings)["task_queues"]
    assert [(q.name, q.exchange.name, q.routing_key) for q in queues] == [
        ("kv.shards", "kv.shards", "kv.shards"),
        ("kv.shards.m", "kv.shards.m", "kv.shards.m"),
    ]


def test_kvbatch_worker_takes_a_served_name_and_needs_none() -> None:
    args = build_parser().parse_args(["worker", "--model", "m", "--served-name", "chat"])
    assert args.served_name == "chat"
    assert build_parser().parse_args(["worker"]).served_name is None
