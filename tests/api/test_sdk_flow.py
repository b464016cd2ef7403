"""Every files.* and batches.* call of the official SDK against a live server, per backend."""

from __future__ import annotations

import io
import json
from typing import Any

import openai
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from kombu import Connection

from infra.harness.batches import chat_line, jsonl, wait_settled
from infra.harness.service import MODEL, LiveServer
from jobs.connections import open_dispatcher
from jobs.pipeline.fair_share import open_fair_queues


def drain_tasks(live: LiveServer) -> list[tuple[dict[str, Any], int | None, str]]:
    """Pop every message the API sent to the shard queue: (argument, priority, task name).

    Fair share holds back what exceeds its window: each take pumps, as a worker's does."""
    settings = live.settings
    options = settings.redis.broker_transport_options()
    found = []
    state = redis.Redis.from_url(settings.redis.redis_url, decode_responses=True)
    dispatcher = open_dispatcher(settings)
    fair = open_fair_queues(settings, state, dispatcher)
    with Connection(settings.redis.redis_url, transport_options=options) as conn:
        queue = conn.SimpleQueue(settings.model_router().queue_of(MODEL))
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                break
            args = message.payload[0]
            found.append((args[0], message.properties.get("priority"), message.headers["task"]))
            message.ack()
            fair.pump()
        queue.close()
    dispatcher.close()
    state.close()
    return found


def test_file_lifecycle(live: LiveServer) -> None:
    client = live.client()
    data = jsonl([chat_line(f"req-{i}") for i in range(3)])
    created = client.files.create(file=("input.jsonl", data), purpose="batch")
    assert created.id.startswith("file-") and len(created.id) > 40
    assert (created.bytes, created.filename, created.purpose) == (len(data), "input.jsonl", "batch")
    assert created.expires_at is not None and created.expires_at > created.created_at

    assert client.files.retrieve(created.id).model_dump() == created.model_dump()
    assert client.files.content(created.id).read() == data
    assert created.id in [f.id for f in client.files.list()]

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)


def test_file_list_pagination_and_order(live: LiveServer) -> None:
    client = live.client("key-beta")
    ids = [client.files.create(file=(f"f{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(5)]
    asc = [f.id for f in client.files.list(order="asc")]
    assert [i for i in asc if i in ids] == ids
    page = client.files.list(limit=2, order="desc")
    assert [f.id for f in page.data] == ids[::-1][:2] and page.has_more
    walked = [f.id for f in client.files.list(limit=2, order="desc")]  # auto-paginates
    assert [i for i in walked if i in ids] == ids[::-1]
    for file_id in ids:
        client.files.delete(file_id)


def test_expires_after_is_honoured(live: LiveServer) -> None:
    client = live.client()
    created = client.files.create(
        file=("e.jsonl", b"{}\n"),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert created.expires_at == created.created_at + 7200


def test_large_upload_streams_round_trip(live: LiveServer) -> None:
    client = live.client()
    lines = [chat_line(f"r{i}", "x" * 2000) for i in range(4000)]  # ~8.7 MB: S3 multipart
    data = jsonl(lines)
    created = client.files.create(file=("big.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.bytes == len(data)
    assert client.files.content(created.id).read() == data


def test_batch_lifecycle(live: LiveServer) -> None:
    client = live.client()
    drain_tasks(live)
    data = jsonl([chat_line(f"req-{i}") for i in range(10)])
    file = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "tests", "priority": "3"},
    )
    assert batch.status == "validating" and batch.id.startswith("batch_")
    assert batch.expires_at == batch.created_at + 24 * 3600
    settled = wait_settled(client, batch.id)
    assert settled.status == "in_progress", settled.errors
    assert settled.model == MODEL and settled.in_progress_at is not None
    assert settled.request_counts is not None and settled.request_counts.total == 10
    assert settled.metadata == {"project": "tests", "priority": "3"}

    tasks = drain_tasks(live)
    assert sorted(t[0]["shard_index"] for t in tasks) == [0, 1, 2]  # shard_size 4
    assert {(t[0]["batch_id"], t[1], t[2]) for t in tasks} == {(batch.id, 3, "kvbatch.run_shard")}

    assert client.batches.retrieve(batch.id).model_dump() == settled.model_dump()
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    assert client.batches.cancel(batch.id).status == "cancelling"


def test_cancel_while_validating_goes_straight_to_cancelled(live: LiveServer) -> None:
    client = live.client()
    data = jsonl([chat_line(f"req-{i}", "y" * 1000) for i in range(3000)])
    file = client.files.create(file=("slow.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = client.batches.cancel(batch.id)
    if cancelled.status == "cancelled":  # intake had not finished: nothing was dispatched
        assert cancelled.cancelled_at is not None and cancelled.cancelling_at is not None
        assert wait_settled(client, batch.id).status == "cancelled"
    else:
        assert cancelled.status == "cancelling"


def test_batch_list_newest_first_with_cursor(live: LiveServer) -> None:
    client = live.client("key-beta")
    file = client.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
    ids = [
        client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]  # our extension: windows < 24h
        ).id
        for _ in range(4)
    ]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    rest = client.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in rest.data][:2] == ids[::-1][2:4]
    assert [b.id for b in client.batches.list(limit=3)][:4] == ids[::-1]
    for batch_id in ids:
        assert wait_settled(client, batch_id).status == "in_progress"


def test_parquet_input_is_validated_and_sharded(live: LiveServer) -> None:
    client = live.client()
    lines = [chat_line(f"pq-{i}") for i in range(6)]
    table = pa.table(
        {
            "custom_id": [line["custom_id"] for line in lines],
            "method": ["POST"] * 6,
            "url": ["/v1/chat/completions"] * 6,
            "body": [json.dumps(line["body"]) for line in lines],
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    file = client.files.create(file=("in.parquet", sink.getvalue()), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"output_format": "parquet"},
    )
    settled = wait_settled(client, batch.id)
    assert settled.status == "in_progress", settled.errors
    assert settled.request_counts is not None and settled.request_counts.total == 6


def test_invalid_file_fails_the_batch_with_line_numbers(live: LiveServer) -> None:
    client = live.client()
    lines = [json.dumps(chat_line("ok-1")), "{not json", json.dumps(chat_line("ok-1"))]
    file = client.files.create(file=("bad.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    settled = wait_settled(client, batch.id)
    assert settled.status == "failed" and settled.failed_at is not None
    assert settled.errors is not None and settled.errors.data is not None
    found = [(e.code, e.line) for e in settled.errors.data]
    assert found == [("invalid_json_line", 2), ("duplicate_custom_id", 3)]


def test_models_list(live: LiveServer) -> None:
    assert [m.id for m in live.client().models.list()] == [MODEL]
    assert live.client().models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        live.client().models.retrieve("gpt-nope")
