"""Body-level problems are a line's 400, not the batch's failure; harmless fields pass.

The file-level table (the batch fails validation) is tests/api/test_bad_input.py; these
lines reach a shard as their rejection, and the worker answers each with a 400 line
(tests/reliability/test_hostile_input.py runs them through the whole stack).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.limits import Limits
from jobs.storage.parquet import iter_parquet_lines
from jobs.wire.line_check import LineChecker, LineIssue
from jobs.wire.lines import RejectedLine, parse_shard_line

MODEL = "m"
LIMITS = Limits(max_n=4, max_tokens=100, served_models=frozenset({MODEL}))
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat(**changes: Any) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **changes}
    return json.dumps({"custom_id": "c", "method": "POST", "url": CHAT, "body": body}).encode()


def completion(**changes: Any) -> bytes:
    body = {"model": MODEL, "prompt": "Once", **changes}
    line = {"custom_id": "c", "method": "POST", "url": COMPLETIONS, "body": body}
    return json.dumps(line).encode()


def image(url: str = "https://example.com/cat.png") -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


# (name, endpoint, line, code, param, words the message must hold)
REJECTED: list[tuple[str, str, bytes, str, str | None, str]] = [
    ("temperature 5", CHAT, chat(temperature=5), "invalid_request", "temperature", "temperature"),
    ("top_p 0", CHAT, chat(top_p=0), "invalid_request", "top_p", "greater than 0"),
    ("unknown field", CHAT, chat(foo=1), "unsupported_parameter", "foo", "foo"),
    ("stream true", CHAT, chat(stream=True), "unsupported_value", "stream", "stream: true"),
    (
        "image part",
        CHAT,
        chat(messages=image()),
        "unsupported_value",
        "messages.0.content.1",
        f"image inputs are not supported by model {MODEL}",
    ),
    ("tools", CHAT, chat(tools=[]), "unsupported_parameter", "tools", "tool calling"),
    (
        "unknown response_format",
        CHAT,
        chat(response_format={"type": "xml"}),
        "invalid_request",
        "response_format",
        "response_format",
    ),
    (
        "json_schema without a name",
        CHAT,
        chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "missing_required_parameter",
        "response_format.json_schema.name",
        "response_format.json_schema.name",
    ),
    (
        "two output constraints",
        CHAT,
        chat(guided_regex="a+", guided_choice=["a"]),
        "invalid_request",
        None,
        "at most one output constraint",
    ),
    (
        "tool_choice",
        CHAT,
        chat(tool_choice="auto"),
        "unsupported_parameter",
        "tool_choice",
        "tool calling",
    ),
    (
        "bad role",
        CHAT,
        chat(messages=[{"role": "robot", "content": "x"}]),
        "invalid_request",
        "messages.0.role",
        "messages.0.role",
    ),
    (
        "content not text",
        CHAT,
        chat(messages=[{"role": "user", "content": 7}]),
        "invalid_request",
        "messages.0.content",
        "messages.0.content",
    ),
    ("no messages", CHAT, chat(messages=[]), "invalid_request", "messages", "messages"),
    ("n over limit", CHAT, chat(n=5), "invalid_request", "n", "at most 4"),
    ("max_tokens over", CHAT, chat(max_tokens=101), "invalid_request", "max_tokens", "100"),
    (
        "max_completion_tokens over",
        CHAT,
        chat(max_completion_tokens=999),
        "invalid_request",
        "max_completion_tokens",
        "100",
    ),
    ("five stops", CHAT, chat(stop=list("abcde")), "invalid_request", "stop", "stop"),
    (
        "top_logprobs 21",
        CHAT,
        chat(logprobs=True, top_logprobs=21),
        "invalid_request",
        "top_logprobs",
        "20",
    ),
    (
        "top_logprobs alone",
        CHAT,
        chat(top_logprobs=2),
        "invalid_request",
        None,
        "top_logprobs requires logprobs",
    ),
    (
        "logit_bias key",
        CHAT,
        chat(logit_bias={"x": 1}),
        "invalid_request",
        "logit_bias",
        "token ids",
    ),
    (
        "logit_bias value",
        CHAT,
        chat(logit_bias={"1": 101}),
        "invalid_request",
        "logit_bias.1",
        "100",
    ),
    ("negative top_k", CHAT, chat(top_k=-2), "invalid_request", "top_k", "top_k"),
    (
        "min_tokens > max",
        CHAT,
        chat(max_tokens=5, min_tokens=9),
        "invalid_request",
        "min_tokens",
        "exceeds",
    ),
    (
        "prompt list",
        COMPLETIONS,
        completion(prompt=["a", "b"]),
        "unsupported_value",
        "prompt",
        "prompt lists are not supported",
    ),
    ("echo", COMPLETIONS, completion(echo=True), "unsupported_value", "echo", "echo"),
    ("empty prompt", COMPLETIONS, completion(prompt=[]), "invalid_request", "prompt", "empty"),
]


@pytest.mark.parametrize(
    ("endpoint", "raw", "code", "param", "words"),
    [case[1:] for case in REJECTED],
    ids=[case[0] for case in REJECTED],
)
def test_a_bad_body_is_the_lines_400(
    endpoint: str, raw: bytes, code: str, param: str | None, words: str
) -> None:
    verdict = LineChecker(endpoint, LIMITS).check(1, raw)
    assert isinstance(verdict, RejectedLine), verdict
    rejection = verdict.rejection
    assert (verdict.custom_id, rejection.code, rejection.param) == ("c", code, param)
    assert words in rejection.message, rejection.message
    assert ".str" not in rejection.message and "list[" not in rejection.message
    assert parse_shard_line(verdict.model_dump_json()) == verdict, "a shard carries it whole"


# Fields that generated bodies often carry and that change nothing in a batch.
HARMLESS: list[tuple[str, str, bytes]] = [
    ("stream false", CHAT, chat(stream=False)),
    ("stream_options without stream", CHAT, chat(stream_options={"include_usage": True})),
    ("store", CHAT, chat(store=False)),
    ("service_tier", CHAT, chat(service_tier="auto")),
    ("parallel_tool_calls without tools", CHAT, chat(parallel_tool_calls=False)),
    (
        "text parts",
        CHAT,
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}]),
    ),
    ("completion stream false", COMPLETIONS, completion(stream=False)),
    ("echo false", COMPLETIONS, completion(echo=False)),
    ("token prompt", COMPLETIONS, completion(prompt=[1, 2, 3])),
]


@pytest.mark.parametrize(
    ("endpoint", "raw"), [case[1:] for case in HARMLESS], ids=[case[0] for case in HARMLESS]
)
def test_harmless_fields_are_accepted(endpoint: str, raw: bytes) -> None:
    assert LineChecker(endpoint, LIMITS).check(1, raw) is None


def test_file_level_problems_still_fail_the_batch() -> None:
    checker = LineChecker(CHAT, LIMITS)
    assert checker.check(1, chat()) is None
    duplicate = checker.check(2, chat(temperature=5))
    assert isinstance(duplicate, LineIssue) and duplicate.code == "duplicate_custom_id"
    other_model = json.loads(chat())
    other_model["custom_id"], other_model["body"]["model"] = "d", "other"
    issue = checker.check(3, json.dumps(other_model).encode())
    assert isinstance(issue, LineIssue) and issue.code == "model_not_found"
    long_id = json.loads(chat())
    long_id["custom_id"] = "x" * 513
    issue = checker.check(4, json.dumps(long_id).encode())
    assert isinstance(issue, LineIssue) and issue.param == "custom_id"


def _deep_schema_line(levels: int) -> bytes:
    """A chat line whose json_schema nests ``levels`` arrays, written without recursion."""
    schema = '{"type": "array", "items": ' * levels + '{"type": "string"}' + "}" * levels
    fmt = f'{{"type": "json_schema", "json_schema": {{"name": "x", "schema": {schema}}}}}'
    return chat(response_format="FMT").replace(b'"FMT"', fmt.encode())


@pytest.mark.parametrize("levels", [1_000, 200_000])
def test_a_line_too_deep_to_decode_is_its_own_400(levels: int) -> None:
    """Deeper than json.loads recurses, the line still names its request: a 400 that says
    where the body nests too deeply, and the next line is checked as usual."""
    checker = LineChecker(CHAT, LIMITS)
    verdict = checker.check(1, _deep_schema_line(levels))
    assert isinstance(verdict, RejectedLine) and verdict.custom_id == "c"
    rejection = verdict.rejection
    assert rejection.param == "response_format"
    assert rejection.message.startswith("response_format.json_schema.schema.items.items")
    assert f"nested {levels + 3} levels deep" in rejection.message
    assert checker.check(2, chat().replace(b'"c"', b'"d"')) is None


def test_a_deep_line_that_is_not_json_fails_the_file() -> None:
    verdict = LineChecker(CHAT, LIMITS).check(1, _deep_schema_line(2_000)[:-1])
    assert isinstance(verdict, LineIssue) and verdict.code == "invalid_json_line"


def test_a_parquet_row_with_a_body_too_deep_to_decode_is_its_own_400(tmp_path: Path) -> None:
    line = json.loads(chat())
    deep_body = _deep_schema_line(1_000).decode().split('"body": ', 1)[1][:-1]
    rows = {"custom_id": ["c"], "method": ["POST"], "url": [CHAT], "body": [deep_body]}
    pq.write_table(pa.table(rows), tmp_path / "in.parquet")
    (raw,) = iter_parquet_lines(tmp_path / "in.parquet")
    verdict = LineChecker(CHAT, LIMITS).check(1, raw)
    assert isinstance(verdict, RejectedLine) and verdict.custom_id == line["custom_id"]
    assert verdict.rejection.message.startswith("response_format.json_schema.schema.items")
