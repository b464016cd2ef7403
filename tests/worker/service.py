"""Assertions the worker tests share about a finished batch's files."""

from __future__ import annotations

from collections import Counter
from typing import Any


def assert_each_once(
    custom_ids: list[str], outputs: list[dict[str, Any]], errors: list[dict[str, Any]]
) -> None:
    seen = Counter(line["custom_id"] for line in outputs + errors)
    assert seen == Counter(custom_ids), "every custom_id exactly once across both files"
