"""Every route behind a key, tenants kept apart down to their result files, unguessable ids,
and uploads over the limit cut off without the API holding them in memory.

tests/api/test_auth.py covers the GET routes and a tenant's input objects; this walks every
route of the OpenAPI schema and every method, and the output and error files a worker wrote.
"""

from __future__ import annotations

import itertools
import re
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import psutil
import pytest

from infra.harness.batches import chat_line, jsonl, result_lines, wait_batch
from infra.harness.service import ApiProcess, LiveServer, make_settings
from tests.worker.conftest import Stack

pytestmark = pytest.mark.slow

OPEN_ROUTES = {"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def every_route(url: str) -> list[tuple[str, str]]:
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    routes = []
    for path, methods in paths.items():
        if path in OPEN_ROUTES:
            continue
        concrete = re.sub(r"\{[^}]+\}", "x-1", path)
        routes += [(method.upper(), concrete) for method in methods]
    return routes


def test_every_route_needs_the_right_key(live_local: LiveServer) -> None:
    routes = every_route(live_local.url)
    assert len(routes) >= 9, routes
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-alpha"}):
            response = httpx.request(method, live_local.url + path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)


def test_ids_are_unguessable(live_local: LiveServer) -> None:
    client = live_local.client()
    files = [
        client.files.create(file=(f"{i}.jsonl", jsonl([chat_line("a")])), purpose="batch")
        for i in range(20)
    ]
    batches = [
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for f in files[:5]
    ]
    file_ids, batch_ids = [f.id for f in files], [b.id for b in batches]
    assert all(re.fullmatch(r"file-[0-9a-f]{48}", i) for i in file_ids), file_ids[:2]
    assert all(re.fullmatch(r"batch_[0-9a-f]{48}", i) for i in batch_ids), batch_ids[:2]
    assert len(set(file_ids)) == len(file_ids)
    # 192 random bits each: ids made one after another share no prefix past the first hex
    # digits (a counter or a timestamp would).
    bodies = sorted(i.removeprefix("file-") for i in file_ids)
    assert max(len(_common_prefix(a, b)) for a, b in itertools.pairwise(bodies)) < 6
    assert len({c for i in bodies for c in i}) == 16, "every hex digit is used"


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def test_other_tenant_cannot_reach_result_files(stack: Stack) -> None:
    stack.start_worker(concurrency=2)
    alpha, beta = stack.server.client("key-alpha"), stack.server.client("key-beta")
    lines = [chat_line("ok", max_tokens=2), chat_line("refused", max_tokens=1, stop_token_ids=[])]
    lines[1]["body"]["messages"][0]["content"] = "lorem " * 3000
    file = alpha.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = alpha.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(alpha, batch.id, {"completed"}, timeout_s=60)
    assert done.output_file_id and done.error_file_id
    outputs, errors = result_lines(alpha, done)
    assert len(outputs) == len(errors) == 1

    for file_id in (done.output_file_id, done.error_file_id):
        for call in (beta.files.retrieve, beta.files.content, beta.files.delete):
            with pytest.raises(openai.NotFoundError):
                call(file_id)
    listed = [f.id for f in beta.files.list()]
    assert not {done.output_file_id, done.error_file_id, file.id} & set(listed)
    # A cursor naming another tenant's batch is answered exactly as an id that never existed.
    unknown = "batch_" + "0" * 48
    answers = [
        httpx.get(
            f"{stack.server.url}/v1/batches",
            params={"after": cursor},
            headers={"Authorization": "Bearer key-beta"},
        )
        for cursor in (batch.id, unknown)
    ]
    assert answers[0].status_code == answers[1].status_code == 400
    assert answers[0].text.replace(batch.id, unknown) == answers[1].text
    assert alpha.files.content(done.output_file_id).read()


@pytest.fixture
def small_limit_api(tmp_path: Any, session_prefix: str) -> Iterator[ApiProcess]:
    settings = make_settings(
        "local", f"{session_prefix}:limit-proc", tmp_path, None, max_file_bytes=2_000_000
    )
    api = ApiProcess(settings, tmp_path / "api.log")
    api.start()
    yield api
    api.kill()


def test_oversized_upload_is_cut_off_early_without_buffering(small_limit_api: ApiProcess) -> None:
    """Claim 512 MB and keep sending: the API answers 413 and stops reading long before."""
    api = small_limit_api
    assert api.process is not None
    server = psutil.Process(api.process.pid)
    rss_before = server.memory_info().rss
    boundary = "kvb"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
    ).encode()
    claimed = 512 * 1024 * 1024
    request = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer key-alpha\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {claimed}\r\n\r\n"
    ).encode() + head
    chunk = b"y" * (256 * 1024)
    sent, peak_rss, reply = 0, rss_before, b""
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + 60
        while sent < claimed and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            peak_rss = max(peak_rss, server.memory_info().rss)
        sock.settimeout(10)
        try:
            reply = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 64 * 1024 * 1024, f"the API kept reading: {sent} bytes accepted"
    assert peak_rss - rss_before < 48 * 1024 * 1024, "the upload was buffered in memory"
