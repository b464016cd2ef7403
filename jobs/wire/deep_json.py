"""JSON lines nested deeper than the standard decoder goes, read without recursion.

``json.loads`` recurses once per level and gives up near Python's recursion limit (about
1,000 levels). A line that deep is still a request with a ``custom_id``: OpenAI answers a
body it refuses with a 400 in the error file and runs the rest of the batch, so intake must
read such a line to say which request it was and where its body goes too deep. ijson's
event parser (yajl, in C) keeps its nesting on a heap stack, and its ``ObjectBuilder`` turns
the events into Python objects without recursion either; it is only reached for lines the
standard decoder refuses as too deep, so ordinary lines keep the fast path.
"""

from __future__ import annotations

from typing import Any

import ijson

from jobs.wire.lines import BodyRejection

# The deepest path a message spells out; past it, a count says how much deeper it goes.
_SHOWN_LEVELS = 8


class DeepJSONError(ValueError):
    """The text is not JSON (found while reading a line too deep for ``json.loads``)."""


def load_deep(raw: bytes) -> Any:
    """Parse ``raw`` whatever its nesting; raises :class:`DeepJSONError` for bad JSON."""
    builder = ijson.ObjectBuilder()
    try:
        for event, value in ijson.basic_parse(raw, use_float=True):
            builder.event(event, value)
    except ijson.JSONError as exc:
        raise DeepJSONError(str(exc).splitlines()[0]) from exc
    return builder.value


def deepest_path(value: Any) -> list[str | int]:
    """The path to the most deeply nested container in ``value``, found without recursion.

    Each container visited keeps only its key and its parent's index in ``trail``, so a
    million-level line costs a million entries, not a million copies of a growing path.
    """
    trail: list[tuple[str | int, int]] = []  # (key in parent, index of parent in trail)
    stack: list[tuple[Any, int, int]] = [(value, -1, 0)]  # (node, its trail index, depth)
    deepest, deepest_at = 0, -1
    while stack:
        node, at, depth = stack.pop()
        if depth > deepest:
            deepest, deepest_at = depth, at
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(child, dict | list):
                trail.append((key, at))
                stack.append((child, len(trail) - 1, depth + 1))
    path: list[str | int] = []
    while deepest_at >= 0:
        key, deepest_at = trail[deepest_at]
        path.append(key)
    return path[::-1]


def too_deep_rejection(body: dict[str, Any]) -> BodyRejection:
    """The 400 for a body too deep for the standard decoder. No endpoint takes one (a
    schema's own bound is far shallower) and no later step should have to read it, so the
    message names the path, as far as a reader needs it (``messages.0.content.0.0.0…``),
    and the depth."""
    path = deepest_path(body)
    shown = ".".join(str(p) for p in path[:_SHOWN_LEVELS])
    more = "…" if len(path) > _SHOWN_LEVELS else ""
    message = (
        f"{shown}{more}: nested {len(path)} levels deep, deeper than a request body may be "
        "(about 1,000 levels of JSON)"
    )
    return BodyRejection(
        code="invalid_request", message=message, param=str(path[0]) if path else None
    )
