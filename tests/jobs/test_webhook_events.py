"""Webhook events and URL checks without a worker: real Redis, a real local receiver."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from jobs.errors import JobsError
from jobs.state.ids import FileId, TenantId, new_batch_id
from jobs.state.records import BatchRecord
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore
from jobs.webhooks.delivery import deliver
from jobs.webhooks.events import WebhookOutbox
from jobs.webhooks.settings import WebhookSettings
from jobs.webhooks.urls import check_webhook_url

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def settings(**overrides: Any) -> WebhookSettings:
    values: dict[str, Any] = {
        "webhook_urls": {"t": "http://127.0.0.1:9/hook"},
        "webhook_secrets": {"t": SECRET},
        **overrides,
    }
    return WebhookSettings.model_validate(values)


def ended_batch(store: JobStore, status: BatchStatus) -> str:
    now = int(time.time())
    record = BatchRecord(
        new_batch_id(), TenantId("t"), "/v1/chat/completions", FileId("f"), "24h", now, now
    )
    store.put_batch(record)
    if status is BatchStatus.FAILED:
        assert store.transition(record.id, BatchStatus.FAILED, now) is not None
        return record.id
    assert store.transition(record.id, BatchStatus.IN_PROGRESS, now) is not None
    if status is BatchStatus.CANCELLED:
        store.transition(record.id, BatchStatus.CANCELLING, now)
    elif status is BatchStatus.COMPLETED:
        store.transition(record.id, BatchStatus.FINALIZING, now)
    assert store.transition(record.id, status, now) is not None
    return record.id


def test_every_end_makes_one_event_with_a_stable_id(store: JobStore) -> None:
    outbox = WebhookOutbox(store, settings())
    ended = {s: ended_batch(store, s) for s in (*BatchStatus,) if s.is_terminal}
    assert len(ended) == 4
    first = outbox.collect(time.time())
    assert len(first) == 4 and outbox.collect(time.time()) == [], "collected once"
    events = {e.body and json.loads(e.body)["data"]["id"]: e for e in map(outbox.load, first) if e}
    for status, batch_id in ended.items():
        body = json.loads(events[batch_id].body)
        assert body["type"] == f"batch.{status.value}" and body["object"] == "event"
    # A batch seen again (a collect that died before clearing it) keeps its event id.
    store.client.sadd(store.key("ended"), ended[BatchStatus.COMPLETED])
    again = outbox.collect(time.time())
    assert again == [events[ended[BatchStatus.COMPLETED]].id]
    outbox.mark_delivered(again[0], time.time())
    store.client.sadd(store.key("ended"), ended[BatchStatus.COMPLETED])
    assert outbox.collect(time.time()) == [], "a delivered event is not sent again"


def test_delivery_is_signed_and_never_follows_redirects(store: JobStore) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((dict(self.headers.items()), body))
            redirect = self.path == "/moved"
            self.send_response(307 if redirect else 204)
            if redirect:
                self.send_header("location", "http://169.254.169.254/latest")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        config = settings(webhook_urls={"t": url + "/hook"}, webhook_allow_private=True)
        outbox = WebhookOutbox(store, config)
        ended_batch(store, BatchStatus.FAILED)
        (event_id,) = outbox.collect(time.time())
        event = outbox.load(event_id)
        assert event is not None
        assert deliver(event, config).delivered
        headers, body = received[-1]
        assert Webhook(SECRET).verify(body, headers)["id"] == event_id
        moved = type(event)(event.id, event.tenant, url + "/moved", event.body, event.first_at)
        attempt = deliver(moved, config)
        assert not attempt.delivered and attempt.retry and "307" in attempt.detail
        assert len(received) == 2, "the redirect was not followed"
        closed = settings(webhook_urls={"t": url + "/hook"})  # loopback not allowed
        assert deliver(event, closed).retry is False
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("url", "overrides", "message"),
    [
        ("ftp://example.com/x", {}, "http"),
        ("file:///etc/passwd", {}, "http"),
        ("http://127.0.0.1:6379/", {}, "non-public"),
        ("http://localhost/", {}, "non-public"),
        ("http://10.1.2.3/", {}, "non-public"),
        ("http://[::1]/", {}, "non-public"),
        ("http://169.254.169.254/latest", {}, "non-public"),
        ("http://a:b@127.0.0.1/", {"webhook_allow_private": True}, "credentials"),
        ("http://127.0.0.1/", {"webhook_allowed_hosts": ["hooks.example.com"]}, "allowed"),
        ("http://no-such-host.invalid/", {}, "resolve"),
    ],
)
def test_bad_urls_are_refused(url: str, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(JobsError, match=message) as info:
        check_webhook_url(url, settings(**overrides))
    assert info.value.status == 400


def test_settings_refuse_unsigned_endpoints() -> None:
    with pytest.raises(ValueError, match="without a webhook secret"):
        WebhookSettings.model_validate({"webhook_urls": {"x": "https://example.com"}})
    with pytest.raises(ValueError, match="whsec_"):
        WebhookSettings.model_validate({"webhook_secrets": {"x": "not base64 !!"}})
    with pytest.raises(ValueError):
        WebhookSettings.model_validate({"webhook_retry_for_s": 3600})  # under 24 h
