"""Bearer keys and tenant isolation: a tenant never sees, reads or touches another's objects."""

from __future__ import annotations

import httpx
import openai
import pytest

from infra.harness.batches import chat_line, jsonl, wait_settled
from infra.harness.service import LiveServer


@pytest.mark.parametrize(
    "path", ["/v1/files", "/v1/batches", "/v1/models", "/v1/files/file-x", "/v1/batches/b"]
)
def test_no_key_and_wrong_key_are_401(live_local: LiveServer, path: str) -> None:
    missing = httpx.get(live_local.url + path)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(live_local.url + path, headers={"Authorization": "Bearer key-gamma"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


def test_sdk_with_wrong_key_raises_authentication_error(live_local: LiveServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        live_local.client("nope").files.list()


def test_other_tenants_ids_are_404(live_local: LiveServer) -> None:
    alpha, beta = live_local.client("key-alpha"), live_local.client("key-beta")
    file = alpha.files.create(file=("a.jsonl", jsonl([chat_line("a")])), purpose="batch")
    batch = alpha.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_settled(alpha, batch.id)

    for call in (
        lambda: beta.files.retrieve(file.id),
        lambda: beta.files.content(file.id),
        lambda: beta.files.delete(file.id),
        lambda: beta.batches.retrieve(batch.id),
        lambda: beta.batches.cancel(batch.id),
        lambda: beta.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert file.id not in [f.id for f in beta.files.list()]
    assert batch.id not in [b.id for b in beta.batches.list()]
    assert alpha.files.retrieve(file.id).id == file.id
    assert alpha.batches.retrieve(batch.id).status == "in_progress"


def test_health_and_metrics_are_open(live_local: LiveServer) -> None:
    assert httpx.get(live_local.url + "/health").json() == {"status": "ok"}
    httpx.get(live_local.url + "/v1/files", headers={"Authorization": "Bearer key-alpha"})
    metrics = httpx.get(live_local.url + "/metrics").text
    assert 'kvbatch_http_requests_total{method="GET",route="/v1/files",status="200"}' in metrics


def test_openapi_schema_lists_every_route(live_local: LiveServer) -> None:
    paths = httpx.get(live_local.url + "/openapi.json").json()["paths"]
    assert {"/v1/files", "/v1/files/{file_id}/content", "/v1/batches/{batch_id}/cancel"} <= set(
        paths
    )
