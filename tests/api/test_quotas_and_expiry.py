"""Quotas (429s naming the limit), expiry bounds and webhook URL checks through the HTTP API.

No worker: batches stay in progress once intake dispatched them, which is what holds quota.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from infra.harness.batches import chat_line, jsonl, wait_settled
from infra.harness.service import LiveServer, make_settings, run_server

QUOTAS = {
    "tenant-a": {"max_active_batches": 2, "max_file_bytes": 6000},
    "tenant-b": {"max_enqueued_tokens": 300},
}


@pytest.fixture(scope="module")
def server(session_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("api-quotas")
    settings = make_settings("local", f"{session_prefix}:quotas", tmp, None, tenant_quotas=QUOTAS)
    with run_server(settings) as live:
        yield live


def post_batch(live: LiveServer, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{live.url}/v1/batches",
        headers={"Authorization": f"Bearer {key}"},
        json={"endpoint": "/v1/chat/completions", "completion_window": "24h", **body},
    )


def upload(client: OpenAI, lines: list[dict[str, Any]]) -> str:
    return client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch").id


def test_active_batches_and_stored_bytes_are_limited(server: LiveServer) -> None:
    client = server.client("key-alpha")
    file_id = upload(client, [chat_line("a", max_tokens=4)])
    broken = upload(client, [{"method": "POST"}])  # fails at intake: holds no quota
    failed = client.batches.create(
        input_file_id=broken, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_settled(client, failed.id).status == "failed"
    for _ in range(2):
        created = post_batch(server, "key-alpha", input_file_id=file_id)
        assert created.status_code == 200, created.text
    before = len(client.batches.list().data)
    refused = post_batch(server, "key-alpha", input_file_id=file_id)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (
        error["code"] == "active_batch_limit_exceeded" and "max_active_batches" in error["message"]
    )
    assert error["type"] == "rate_limit_error"
    assert len(client.batches.list().data) == before, "nothing stored"

    files_before = len(client.files.list().data)
    big = httpx.post(
        f"{server.url}/v1/files",
        headers={"Authorization": "Bearer key-alpha"},
        files={"file": ("big.jsonl", b"x" * 6000)},
        data={"purpose": "batch"},
    )
    assert big.status_code == 429, big.text
    error = big.json()["error"]
    assert error["code"] == "storage_limit_exceeded" and "max_file_bytes" in error["message"]
    assert len(client.files.list().data) == files_before, "nothing stored"


def test_enqueued_tokens_are_limited(server: LiveServer) -> None:
    client = server.client("key-beta")
    fits = upload(client, [chat_line("a", max_tokens=200)])  # about 240 tokens
    first = client.batches.create(
        input_file_id=fits, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_settled(client, first.id).status == "in_progress"
    second = client.batches.create(
        input_file_id=fits, endpoint="/v1/chat/completions", completion_window="24h"
    )
    ended = wait_settled(client, second.id)  # at intake, once its estimate is known
    assert ended.status == "failed" and ended.errors is not None and ended.errors.data
    issue = ended.errors.data[0]
    assert issue.code == "token_limit_exceeded"
    assert issue.message is not None and "max_enqueued_tokens is 300" in issue.message


def test_expiry_bounds(server: LiveServer) -> None:
    client = server.client("key-alpha")
    made = client.files.create(
        file=("e.jsonl", jsonl([chat_line("a")])),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert made.expires_at == made.created_at + 7200
    auth = {"Authorization": "Bearer key-alpha"}
    for seconds in ("-1", "10", str(10**12), "1.5"):
        response = httpx.post(
            f"{server.url}/v1/files",
            headers=auth,
            files={"file": ("e.jsonl", b"{}\n")},
            data={
                "purpose": "batch",
                "expires_after[anchor]": "created_at",
                "expires_after[seconds]": seconds,
            },
        )
        assert response.status_code == 400, (seconds, response.text)
        assert response.json()["error"]["param"] == "expires_after.seconds"
    bad_bodies = [
        {"anchor": "created_at", "seconds": 10},
        {"anchor": "created_at", "seconds": 10**12},
        {"anchor": "created_at", "seconds": -5},
        {"anchor": "last_active_at", "seconds": 7200},
        {"anchor": "created_at", "seconds": 7200, "extra": 1},
    ]
    before = len(client.batches.list().data)
    for body in bad_bodies:
        response = post_batch(server, "key-alpha", input_file_id=made.id, output_expires_after=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"].startswith("output_expires_after")
    assert len(client.batches.list().data) == before, "nothing stored"


def test_per_batch_webhook_urls_are_off_unless_allowed(server: LiveServer) -> None:
    client = server.client("key-alpha")
    file_id = upload(client, [chat_line("a")])
    response = post_batch(
        server,
        "key-alpha",
        input_file_id=file_id,
        metadata={"webhook_url": "https://example.com/hook"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "metadata.webhook_url"
