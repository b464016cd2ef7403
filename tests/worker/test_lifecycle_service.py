"""Results while a batch runs and signed webhooks, through the whole service (SDK, worker).

The webhook receiver is a real HTTP server on loopback (allowed here by settings); it starts
refusing connections and comes up later, so the first deliveries fail and a retry lands.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from infra.harness.batches import chat_line, jsonl, result_lines, wait_batch
from infra.harness.redis_server import free_port
from infra.harness.service import MODEL
from tests.worker.conftest import Stack

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"kvbatch-test-webhook-secret-0123").decode()
RECEIVER_PORT = free_port()
RECEIVER = f"http://127.0.0.1:{RECEIVER_PORT}/hook"
STACK_SETTINGS = {
    "shard_size": 3,
    "fair_share_window": 2,  # shards reach the broker as earlier ones are taken
    "webhook_urls": {"tenant-a": RECEIVER},
    "webhook_secrets": {"tenant-a": SECRET, "tenant-b": SECRET},
    "webhook_allowed_hosts": ["127.0.0.1"],
    "webhook_allow_private": True,
    "webhook_metadata_url": True,
    "webhook_backoff_s": 0.5,
    "webhook_backoff_max_s": 1.0,
    "webhook_poll_s": 0.5,
}


class Receiver:
    """Records every POST; answers 500 the first time it sees a ``webhook-id``, then 200."""

    def __init__(self, port: int) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.paths: dict[str, str] = {}  # webhook-id -> the path it was sent to
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                seen = {h["webhook-id"] for h, _ in outer.requests}
                outer.requests.append((dict(self.headers.items()), body))
                outer.paths[self.headers["webhook-id"]] = self.path
                self.send_response(200 if self.headers["webhook-id"] in seen else 500)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        return [(h, json.loads(b)) for h, b in self.requests]


def upload(client: OpenAI, lines: list[dict[str, Any]]) -> str:
    return client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch").id


def results_page(client: OpenAI, batch_id: str, **query: Any) -> dict[str, Any]:
    page = client.get(f"/batches/{batch_id}/results", cast_to=dict, options={"params": query})
    assert isinstance(page, dict)
    return page


def test_results_while_running_match_the_final_files(stack: Stack) -> None:
    client = stack.client()
    # Shards of 3 lines; later shards generate more, so they end one after another.
    lines = [chat_line(f"r{i}", f"Count to {i}.", max_tokens=1 + 5 * (i // 3)) for i in range(6)]
    lines[5]["body"]["temperature"] = -1  # one 400 line: the error file has lines too
    batch = client.batches.create(
        input_file_id=upload(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    served: list[tuple[str, str]] = []
    first_read_running = 0  # lines served when a page first had some while the batch ran
    cursor: str | None = None
    deadline = time.monotonic() + 240
    while True:
        page = results_page(client, batch.id, limit=3, **({"after": cursor} if cursor else {}))
        served += [(item["type"], item["line"]) for item in page["data"]]
        if page["batch_status"] == "in_progress" and not first_read_running:
            # Only the first: every line may be downloadable before the status turns
            # (the last shard committed, the batch not finalized yet).
            first_read_running = len(served)
        cursor = page["next_cursor"]
        if page["finished"]:
            break
        assert time.monotonic() < deadline
        if not page["has_more"]:
            time.sleep(0.1)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.model_extra is not None
    assert done.model_extra["downloadable_lines"] == 6
    assert 0 < first_read_running < 6, "some lines were read while the batch ran"

    def file_lines(file_id: str | None) -> list[str]:
        assert file_id is not None
        return client.files.content(file_id).read().decode().splitlines()

    assert sorted(x for kind, x in served if kind == "output") == sorted(
        file_lines(done.output_file_id)
    )
    assert [x for kind, x in served if kind == "error"] == file_lines(done.error_file_id)
    assert len(served) == len(set(served)) == 6

    # Cursors are tenant-scoped and bound to their batch; forged ones are refused.
    other = client.batches.create(
        input_file_id=upload(client, lines[:1]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    base = f"{stack.server.url}/v1/batches"
    auth = {"Authorization": "Bearer key-alpha"}
    for after in (cursor, "garbage", cursor[:-3] + "AAA"):
        response = httpx.get(f"{base}/{other.id}/results", params={"after": after}, headers=auth)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_cursor"
    foreign = httpx.get(f"{base}/{batch.id}/results", headers={"Authorization": "Bearer key-beta"})
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "batch_not_found"


@pytest.fixture
def receiver_later() -> Iterator[list[Receiver]]:
    holder: list[Receiver] = []
    yield holder
    for receiver in holder:
        receiver.close()


def test_webhooks_are_signed_retried_and_carry_one_id(
    stack: Stack, receiver_later: list[Receiver]
) -> None:
    client = stack.client()
    ok = client.batches.create(
        input_file_id=upload(client, [chat_line("a", max_tokens=2)]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    bad = client.batches.create(  # fails at intake: a line without custom_id
        input_file_id=upload(client, [{"method": "POST"}]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"webhook_url": f"{RECEIVER}-own"},  # its own endpoint, as settings allow
    )
    wait_batch(client, ok.id, {"completed"})
    wait_batch(client, bad.id, {"failed"})
    time.sleep(2)  # the receiver is down: deliveries fail and wait for their retry
    receiver = Receiver(RECEIVER_PORT)  # up; each event's first request still gets a 500
    receiver_later.append(receiver)
    ours = {ok.id, bad.id}

    def delivered() -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in receiver.requests if json.loads(b)["data"]["id"] in ours]

    deadline = time.monotonic() + 60
    while len(delivered()) < 4:  # each event: a 500, then a 200
        assert time.monotonic() < deadline, receiver.requests
        time.sleep(0.2)
    time.sleep(1.5)  # a retry of a delivered event would show by now

    verifier = Webhook(SECRET)
    by_batch: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for headers, body in delivered():
        event = verifier.verify(body, headers)  # raises unless the signature is valid
        assert headers["webhook-id"] == event["id"] and event["object"] == "event"
        by_batch.setdefault(event["data"]["id"], []).append((headers["webhook-id"], event))
    assert {e["type"] for _, e in by_batch[ok.id]} == {"batch.completed"}
    assert {e["type"] for _, e in by_batch[bad.id]} == {"batch.failed"}
    for attempts in by_batch.values():  # a duplicate delivery keeps its webhook-id
        assert len(attempts) == 2 and attempts[0][0] == attempts[1][0]
    assert receiver.paths[by_batch[ok.id][0][0]] == "/hook"
    assert receiver.paths[by_batch[bad.id][0][0]] == "/hook-own"
    # OpenAI's own SDK reads the events as its batch webhook types.
    unwrapped = OpenAI(api_key="x", webhook_secret=SECRET).webhooks.unwrap(
        receiver.requests[-1][1].decode(), receiver.requests[-1][0]
    )
    assert unwrapped.type in ("batch.completed", "batch.failed")
    # The API's /metrics counts every worker's attempts (earlier tests' events count too).
    metrics = httpx.get(f"{stack.server.url}/metrics", timeout=10).text
    counted = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "kvbatch_webhook_attempts_total" and sample.labels["tenant"] == "tenant-a"
    }
    assert counted["delivered"] >= 2 and counted["retried"] >= 2, counted


@pytest.mark.parametrize(
    "url,message",
    [
        ("ftp://127.0.0.1/hook", "http"),
        ("http://user:pw@127.0.0.1/hook", "credentials"),
        ("http://10.0.0.1/hook", "allowed hosts"),
        ("http://[::1", "malformed"),
    ],
)
def test_bad_webhook_urls_are_refused_at_create(stack: Stack, url: str, message: str) -> None:
    client = stack.client()
    file_id = upload(client, [chat_line("a", max_tokens=2)])
    before = len(client.batches.list().data)
    response = httpx.post(
        f"{stack.server.url}/v1/batches",
        headers={"Authorization": "Bearer key-alpha"},
        json={
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"webhook_url": url},
        },
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "metadata.webhook_url" and message in error["message"]
    assert len(client.batches.list().data) == before, "nothing stored"


ENDPOINT_BODIES: dict[Any, dict[str, Any]] = {  # keys: the SDK's endpoint literals
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    "/v1/completions": {"prompt": "The sky is", "max_tokens": 2},
    "/v1/embeddings": {"input": ["one text", "two texts here"]},
    "/v1/responses": {"input": "Hi", "max_output_tokens": 2},
}


def line_usage(body: dict[str, Any]) -> tuple[int, int, int]:
    """(input, cached, output) tokens of one answer, whichever endpoint's shape it has."""
    usage = body["usage"]
    if "input_tokens" in usage:  # a Responses answer
        cached = usage["input_tokens_details"]["cached_tokens"]
        return usage["input_tokens"], cached, usage["output_tokens"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return usage["prompt_tokens"], cached, usage.get("completion_tokens", 0)


def test_usage_and_model_are_filled_for_every_endpoint(stack: Stack) -> None:
    client = stack.client()
    batches = {}
    for url, body in ENDPOINT_BODIES.items():
        lines = [
            {"custom_id": f"u{i}", "method": "POST", "url": url, "body": {"model": MODEL, **body}}
            for i in range(2)
        ]
        batches[url] = client.batches.create(
            input_file_id=upload(client, lines), endpoint=url, completion_window="24h"
        ).id
    for url, batch_id in batches.items():
        batch = wait_batch(client, batch_id, {"completed", "failed"})
        assert batch.status == "completed" and batch.model == MODEL, batch
        outputs, _ = result_lines(client, batch)
        sums = [
            sum(x) for x in zip(*(line_usage(o["response"]["body"]) for o in outputs), strict=True)
        ]
        usage = batch.usage
        assert usage is not None and len(outputs) == 2
        got = [usage.input_tokens, usage.input_tokens_details.cached_tokens, usage.output_tokens]
        assert got == sums and usage.input_tokens > 0, (url, usage)
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
        assert (usage.output_tokens > 0) == (url != "/v1/embeddings"), url
