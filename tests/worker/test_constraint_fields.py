"""Every output-constraint field a line may carry reaches the engine as the constraint it
names, on chat and on completion lines alike (the service tests run a few of them end to
end; this covers each field on each endpoint without a model)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.sampling_params import SamplingParams
from engine.structured_outputs import StructuredOutputsParams
from infra.harness.batches import batch_line
from jobs.wire.lines import parse_input_line
from worker.engine_requests import engine_request

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}

# (field, value, the engine's constraint kind, its spec as the engine keys it, origin)
VLLM_EXTRAS: list[tuple[str, Any, str, Any, str]] = [
    ("guided_json", SCHEMA, "json", SCHEMA, "guided_json"),
    ("guided_json", json.dumps(SCHEMA), "json", SCHEMA, "guided_json"),
    ("guided_regex", r"[0-9]{4}", "regex", r"[0-9]{4}", "guided_regex"),
    ("guided_choice", ["yes", "no"], "choice", ["yes", "no"], "guided_choice"),
    ("structured_outputs", {"json": SCHEMA}, "json", SCHEMA, "structured_outputs"),
    ("structured_outputs", {"json_object": True}, "json_object", True, "structured_outputs"),
    ("structured_outputs", {"regex": "a+"}, "regex", "a+", "structured_outputs"),
    ("structured_outputs", {"choice": ["x", "y"]}, "choice", ["x", "y"], "structured_outputs"),
    (
        "structured_outputs",
        {"grammar": 'root ::= "a" | "b"'},
        "grammar",
        'root ::= "a" | "b"',
        "structured_outputs",
    ),
]


def _body(url: str, **extra: Any) -> Any:
    fields = (
        {"messages": [{"role": "user", "content": "Hi"}]} if url == CHAT_URL else {"prompt": "Hi"}
    )
    return parse_input_line(json.dumps(batch_line("x", url, **fields, **extra))).body


def _params(body: Any) -> SamplingParams:
    params = engine_request(body).params
    assert isinstance(params, SamplingParams)
    return params


def _constraint(url: str, **extra: Any) -> StructuredOutputsParams:
    constraint = _params(_body(url, **extra)).structured_outputs
    assert constraint is not None
    return constraint


@pytest.mark.parametrize("url", [CHAT_URL, COMPLETIONS_URL])
@pytest.mark.parametrize(
    ("field", "value", "kind", "spec", "origin"),
    VLLM_EXTRAS,
    ids=[f"{f}-{k}-{type(v).__name__}" for f, v, k, _, _ in VLLM_EXTRAS],
)
def test_vllm_extras_reach_the_engine_on_chat_and_completion_lines(
    url: str, field: str, value: Any, kind: str, spec: Any, origin: str
) -> None:
    constraint = _constraint(url, **{field: value})
    assert (constraint.kind, constraint.origin) == (kind, origin)
    expected = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert constraint.canonical_spec() == f"{kind}:{expected}"


@pytest.mark.parametrize(
    ("response_format", "kind", "origin"),
    [
        ({"type": "json_object"}, "json_object", "response_format"),
        (
            {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA, "strict": True}},
            "json",
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "s"}},  # no schema: any object
            "json_object",
            "response_format.json_schema.schema",
        ),
    ],
    ids=["json_object", "json_schema", "json_schema-without-schema"],
)
def test_response_format_reaches_the_engine(
    response_format: dict[str, Any], kind: str, origin: str
) -> None:
    constraint = _constraint(CHAT_URL, response_format=response_format)
    assert (constraint.kind, constraint.origin) == (kind, origin)
    if kind == "json":
        assert constraint.json == SCHEMA


def test_a_plain_line_and_a_text_format_are_unconstrained() -> None:
    text = {"type": "text"}
    for body in (_body(CHAT_URL), _body(COMPLETIONS_URL), _body(CHAT_URL, response_format=text)):
        assert _params(body).structured_outputs is None
