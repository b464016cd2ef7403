"""A batch's one JSON schema, carried from intake to a typed Parquet column at finalize.

When every line of a chat batch asks for the same ``response_format.json_schema``, intake
keeps that schema beside the shards; a Parquet output then gets, besides the raw response,
a ``content`` column (the answer's text) and a ``parsed`` column whose Arrow type follows
the schema, so an extraction job loads straight into a dataframe::

    {"type": "object", "properties": {"total": {"type": "number"},
                                      "items": {"type": "array", "items": {...}}}}
      -> struct<total: double, items: list<struct<...>>>

Answers that are not JSON or do not validate (cut by ``max_tokens``) get a null ``parsed``.
Schema parts Arrow cannot type (unions, ``$ref``, open objects) become JSON text.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pyarrow as pa

from jobs.pipeline.shards import shard_prefix
from jobs.wire.request_bodies import ChatCompletionBody, RequestBody

_SCALARS = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
}


def output_schema_key(batch_id: str) -> str:
    """Beside the shards, so that it goes when they go."""
    return f"{shard_prefix(batch_id)}output_schema.json"


class SharedSchema:
    """Follows the lines of a file: the schema all of them share, if they share exactly one."""

    def __init__(self) -> None:
        self._text: str | None = None  # the first line's schema, in its own key order
        self._canonical: str | None = None  # sorted keys: equal schemas compare equal
        self._mixed = False

    def note(self, body: RequestBody) -> None:
        if self._mixed:
            return
        schema = _schema_of(body)
        canonical = None if schema is None else json.dumps(schema, sort_keys=True)
        if canonical is None or (self._canonical is not None and canonical != self._canonical):
            self._mixed = True
            self._text = self._canonical = None
        elif self._canonical is None:
            self._canonical = canonical
            self._text = json.dumps(schema)  # column order follows the schema's properties

    @property
    def schema_text(self) -> str | None:
        return None if self._mixed else self._text


def _schema_of(body: RequestBody) -> dict[str, Any] | None:
    if not isinstance(body, ChatCompletionBody) or body.response_format is None:
        return None
    fmt = body.response_format
    if fmt.type != "json_schema":
        return None
    return fmt.json_schema.json_schema


def arrow_type(schema: Any) -> pa.DataType:
    """The Arrow type of values valid under ``schema``; JSON text where there is none."""
    if not isinstance(schema, dict):
        return pa.string()
    kind = schema.get("type")
    if kind is None and isinstance(schema.get("enum"), list):
        values = schema["enum"]
        kind = "string" if all(isinstance(v, str) for v in values) else None
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array" and isinstance(schema.get("items"), dict):
        return pa.list_(arrow_type(schema["items"]))
    properties = schema.get("properties")
    if kind == "object" and isinstance(properties, dict) and properties:
        return pa.struct([pa.field(name, arrow_type(sub)) for name, sub in properties.items()])
    return pa.string()


def conform(value: Any, type_: pa.DataType) -> Any:
    """``value`` shaped for ``type_``: JSON text where the type is a string but the value is
    not, integers as floats where a double is expected."""
    if value is None:
        return None
    if pa.types.is_struct(type_):
        if not isinstance(value, dict):
            return None
        return {f.name: conform(value.get(f.name), f.type) for f in type_}
    if pa.types.is_list(type_):
        if not isinstance(value, list):
            return None
        return [conform(v, type_.value_type) for v in value]
    if pa.types.is_string(type_):
        return value if isinstance(value, str) else json.dumps(value)
    if pa.types.is_floating(type_) and isinstance(value, int | float):
        return float(value)
    return value


class ParsedColumn:
    """Parses each answer against the schema into a value of :func:`arrow_type`."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.type = arrow_type(schema)
        self._validator = jsonschema.validators.validator_for(schema)(schema)

    def parse(self, text: str | None) -> Any:
        if text is None:
            return None
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return None
        if not self._validator.is_valid(value):
            return None
        return conform(value, self.type)


def answer_text(response_body: dict[str, Any]) -> str | None:
    """The first choice's text of a chat or text completion."""
    choices = response_body.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else None
    text = choice.get("text")
    return text if isinstance(text, str) else None
