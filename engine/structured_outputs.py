"""What a caller may constrain an output to (vLLM's ``StructuredOutputsParams``), checked on entry.

Exactly one of ``json`` (a JSON schema), ``json_object``, ``regex``, ``choice`` or ``grammar``
(EBNF in the grammar engine's dialect) is set. :func:`check_structured_outputs` refuses, with the
path of the offending part of the schema, what the grammar engine would choke on or what would
cost a worker too much: schemas over a size or nesting bound, ``$ref`` targets that do not exist
or only point at each other, and anything JSON Schema's own meta-schema rejects (unknown types,
a ``required`` that is not a list...). Compiling the grammar later cannot then fail on input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from engine.sampling_params import SamplingParamsError


class StructuredOutputsError(SamplingParamsError):
    """A constraint the engine refuses; the message names the path inside the schema."""


@dataclass(slots=True, frozen=True)
class StructuredOutputsBounds:
    """How large a constraint one request may hand the grammar compiler."""

    max_schema_bytes: int = 1_000_000
    max_schema_depth: int = 64
    max_choices: int = 1024


@dataclass(slots=True)
class StructuredOutputsParams:
    """One output constraint. ``json`` may be a schema object or its JSON text."""

    json: dict[str, Any] | bool | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    # Where the constraint came from (``response_format.json_schema.schema``), for messages.
    origin: str = ""
    _key: str = field(init=False, default="", repr=False)

    def __post_init__(self) -> None:
        kinds = [
            name
            for name, value in (
                ("json", self.json),
                ("json_object", self.json_object or None),
                ("regex", self.regex),
                ("choice", self.choice),
                ("grammar", self.grammar),
            )
            if value is not None
        ]
        if not self.origin:
            self.origin = kinds[0] if kinds else "structured_outputs"
        if len(kinds) != 1:
            raise StructuredOutputsError(
                "set exactly one of json, json_object, regex, choice or grammar; got "
                + (", ".join(kinds) or "none")
            )
        if isinstance(self.json, str):
            try:
                self.json = json.loads(self.json)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise StructuredOutputsError(
                    f"{self.origin}: the schema is not valid JSON: {exc}"
                ) from exc

    @property
    def key(self) -> str:
        """The canonical hash: one compile per distinct key (check the bounds first)."""
        if not self._key:
            self._key = hashlib.sha256(self.canonical_spec().encode()).hexdigest()
        return self._key

    @property
    def kind(self) -> str:
        if self.json is not None:
            return "json"
        if self.json_object:
            return "json_object"
        if self.regex is not None:
            return "regex"
        return "choice" if self.choice is not None else "grammar"

    def canonical_spec(self) -> str:
        """The constraint as sorted-key JSON: equal schemas written differently share a key."""
        value: Any = {
            "json": self.json,
            "json_object": True,
            "regex": self.regex,
            "choice": self.choice,
            "grammar": self.grammar,
        }[self.kind]
        try:
            text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except RecursionError as exc:
            raise StructuredOutputsError(f"{self.origin}: the schema is nested too deeply") from exc
        return f"{self.kind}:{text}"

    def choice_grammar(self) -> str:
        """EBNF for ``choice``: the root is exactly one of the strings."""
        assert self.choice is not None
        return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in self.choice)


def check_structured_outputs(
    params: StructuredOutputsParams, bounds: StructuredOutputsBounds
) -> None:
    """Raise ``StructuredOutputsError`` for a constraint the engine will not compile."""
    where = params.origin
    if params.choice is not None:
        if not params.choice or len(params.choice) > bounds.max_choices:
            raise StructuredOutputsError(
                f"{where}: give 1 to {bounds.max_choices} strings, got {len(params.choice)}"
            )
        if any(not isinstance(c, str) or not c for c in params.choice):
            raise StructuredOutputsError(f"{where}: every choice must be a non-empty string")
    text = params.regex or params.grammar
    if text is not None and len(text.encode()) > bounds.max_schema_bytes:
        raise StructuredOutputsError(
            f"{where}: {len(text.encode())} bytes, over the limit of {bounds.max_schema_bytes}"
        )
    if params.json is not None:
        check_json_schema(params.json, bounds, where)


def check_json_schema(schema: Any, bounds: StructuredOutputsBounds, where: str = "json") -> None:
    """Bounds first (iteratively, so a 100,000-deep schema costs no recursion), then refs,
    then the meta-schema of the schema's own draft."""
    if not isinstance(schema, dict | bool):
        raise StructuredOutputsError(
            f"{where}: a schema must be an object or a boolean, not {type(schema).__name__}"
        )
    for path, depth in _walk(schema):
        if depth > bounds.max_schema_depth:
            raise StructuredOutputsError(
                f"{_dotted(where, path)}: the schema is nested deeper than "
                f"{bounds.max_schema_depth} levels"
            )
    size = len(json.dumps(schema, separators=(",", ":")).encode())
    if size > bounds.max_schema_bytes:
        raise StructuredOutputsError(
            f"{where}: the schema is {size} bytes, over the limit of {bounds.max_schema_bytes}"
        )
    if isinstance(schema, dict):
        _check_refs(schema, where)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(validator(validator.META_SCHEMA).iter_errors(schema))
    if error is not None:
        path = list(error.absolute_path)
        raise StructuredOutputsError(f"{_dotted(where, path)}: {error.message}")


def _walk(schema: Any) -> Iterator[tuple[list[str | int], int]]:
    """Every container in ``schema`` with its path and depth, without recursion."""
    stack: list[tuple[Any, list[str | int]]] = [(schema, [])]
    while stack:
        node, path = stack.pop()
        yield path, len(path)
        if len(path) > 100_000:
            return
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(child, dict | list):
                stack.append((child, [*path, key]))


def _dotted(where: str, path: list[str | int]) -> str:
    return where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _check_refs(schema: dict[str, Any], where: str) -> None:
    """Every ``$ref`` is local and resolves; no chain of refs loops back on itself without
    a schema in between (``a -> b -> a`` describes no value at all)."""
    for path, _ in _walk(schema):
        node = _resolve_path(schema, path)
        if not isinstance(node, dict) or not isinstance(node.get("$ref"), str):
            continue
        seen: list[str] = []
        target: Any = node
        while isinstance(target, dict) and isinstance(target.get("$ref"), str):
            ref = target["$ref"]
            if ref in seen:
                raise StructuredOutputsError(
                    f"{_dotted(where, path)}.$ref: the references loop without a schema in "
                    f"between ({' -> '.join([*seen, ref])})"
                )
            seen.append(ref)
            target = _resolve_ref(schema, ref, _dotted(where, path))
            if not isinstance(target, dict) or set(target) != {"$ref"}:
                break


def _resolve_path(schema: Any, path: list[str | int]) -> Any:
    node = schema
    for part in path:
        node = node[part]
    return node


def _resolve_ref(schema: dict[str, Any], ref: str, where: str) -> Any:
    if not ref.startswith("#"):
        raise StructuredOutputsError(
            f"{where}.$ref: only local references (#/...) are supported, got {ref!r}"
        )
    node: Any = schema
    for raw in ref[1:].split("/")[1:] if ref != "#" else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise StructuredOutputsError(
                f"{where}.$ref: {ref!r} does not resolve inside the schema"
            )
    return node
