"""Fuzzing: the input-line checker with hypothesis, the live API with schemathesis.

The line property that matters most: whatever intake puts in a shard, the worker can parse
and turn into an engine request or a per-line 400 (a rejected body, or a ValueError from the
engine's checks); anything else would leave a shard that fails on every delivery.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from infra.harness.service import MODEL, LiveServer
from jobs.limits import Limits
from jobs.wire.line_check import LineChecker, LineIssue
from jobs.wire.lines import RejectedLine, parse_input_line, parse_shard_line
from worker.engine_requests import engine_requests

LIMITS = Limits(
    max_requests_per_file=1000,
    max_file_bytes=10**8,
    max_line_bytes=100_000,
    max_n=4,
    max_tokens=512,
    max_errors_reported=10,
    shard_size=8,
    served_models=frozenset({MODEL}),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Mostly valid values near the bounds, with a few wrong ones: enough lines get through intake
# (about a third) to exercise the worker's side of the property.
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "user", "system", "assistant", "robot"]),
        "content": st.text(max_size=30)
        | json_values
        | st.just([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]),
    },
)
body_fields = {
    "max_tokens": st.integers(0, 600),
    "max_completion_tokens": st.integers(0, 600),
    "temperature": st.floats(0, 2.1),
    "top_p": st.floats(0, 1),
    "n": st.integers(0, 5),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=5),
    "seed": st.integers(-(2**64), 2**64),
    "logit_bias": st.dictionaries(
        st.integers(-1, 2**17).map(str) | st.text(max_size=3), st.floats(-101, 101), max_size=3
    ),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 21),
    "top_k": st.integers(-2, 100),
    "min_p": st.floats(0, 1),
    "repetition_penalty": st.floats(0, 2),
    "min_tokens": st.integers(0, 20),
    "ignore_eos": st.booleans(),
    "stop_token_ids": st.lists(st.integers(-1, 2**40), max_size=3),
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    # Harmless fields and features we refuse by name: both must leave a runnable shard.
    "stream": st.booleans(),
    "stream_options": st.just({"include_usage": True}),
    "store": st.booleans(),
    "service_tier": st.sampled_from(["auto", "default"]),
    "parallel_tool_calls": st.booleans(),
    "tools": st.just([{"type": "function", "function": {"name": "f"}}]),
}
chat_body = st.fixed_dictionaries(
    {"model": st.just(MODEL), "messages": st.lists(message, min_size=1, max_size=3)},
    optional=body_fields,
)
chat_line = st.fixed_dictionaries(
    {
        "custom_id": st.text(min_size=1, max_size=10),
        "method": st.just("POST"),
        "url": st.just("/v1/chat/completions"),
        "body": chat_body,
    }
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300))
def test_checker_answers_any_bytes(raw: bytes) -> None:
    verdict = LineChecker("/v1/chat/completions", LIMITS).check(1, raw)
    if isinstance(verdict, LineIssue):
        assert verdict.code != "" and verdict.line == 1
    elif isinstance(verdict, RejectedLine):
        assert verdict.rejection.code and verdict.rejection.message


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=chat_line)
def test_what_intake_accepts_the_worker_can_run(line: dict[str, Any]) -> None:
    raw = json.dumps(line).encode()
    verdict = LineChecker("/v1/chat/completions", LIMITS).check(1, raw)
    if isinstance(verdict, LineIssue):
        assert verdict.code and verdict.message
        return
    if isinstance(verdict, RejectedLine):
        assert parse_shard_line(verdict.model_dump_json()) == verdict
        return
    parsed = parse_input_line(raw)
    with contextlib.suppress(ValueError):  # a per-line 400 in the error file, by design
        engine_requests(parsed.body)


def fuzz_operation(operation: Any, url: str) -> None:
    """Up to 25 generated requests against one operation: none may get a 5xx.

    Driven through hypothesis directly rather than schemathesis's pytest plugin, whose
    reach into pytest internals broke on a pytest minor release.
    """

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        headers = {"Authorization": "Bearer key-alpha"}
        response = case.call(base_url=url, headers=headers, timeout=10)
        case.validate_response(response, checks=[not_a_server_error])

    run()


@pytest.mark.slow
def test_api_never_answers_5xx(live_local: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{live_local.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the live schema has an invalid operation: {result.err()}"
        operations.append(result.ok())
    assert len(operations) >= 8, "the live schema lost its routes"
    for operation in operations:
        fuzz_operation(operation, live_local.url)
