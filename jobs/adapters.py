"""The LoRA adapters a deployment serves: ``KVBATCH_LORA_ADAPTERS``.

Each adapter is a name a batch line's ``model`` may use, the base model it was trained on
(a ``KVBATCH_MODELS`` name: its batches go to that model's shard queue and run on a worker
holding it), and its PEFT directory, a local path or an ``s3://`` prefix::

    KVBATCH_LORA_ADAPTERS="sql=qwen3-tiny:/adapters/sql,legal=qwen3-tiny:s3://bucket/legal"
    KVBATCH_LORA_ADAPTERS='{"sql": {"base": "qwen3-tiny", "path": "/adapters/sql"}}'

In the short form the base model ends at the first ``:`` (a model name never holds one), so
the path may be an ``s3://`` URL. The adapter's files are read by the worker that first runs
a line of it (an adapter it cannot run answers those lines with an error, never a crash).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RegisteredAdapter:
    """One ``KVBATCH_LORA_ADAPTERS`` entry."""

    name: str
    base: str  # the served model it belongs to
    path: str  # PEFT directory: local or s3://

    def __post_init__(self) -> None:
        for what, value in (("name", self.name), ("base model", self.base)):
            if not value or any(c.isspace() or c in ",:=" for c in value):
                raise ValueError(f"an adapter's {what} is one word without ',:=', got {value!r}")
        if not self.path:
            raise ValueError(f"adapter {self.name!r} needs a path")


def _entry(name: str, value: Any) -> RegisteredAdapter:
    if isinstance(value, RegisteredAdapter):
        return value
    if isinstance(value, Mapping):
        return RegisteredAdapter(name, str(value.get("base", "")), str(value.get("path", "")))
    base, sep, path = str(value).partition(":")
    if not sep or path.startswith("//"):  # "s3://..." alone: the base model is missing
        raise ValueError(
            f"adapter {name!r}: expected 'base_model:path' (e.g. 'qwen3-tiny:s3://b/a'), "
            f"got {value!r}"
        )
    return RegisteredAdapter(name.strip(), base.strip(), path.strip())


def parse_adapters(value: Any) -> dict[str, RegisteredAdapter]:
    """``"name=base:path,..."`` or a JSON object ``{name: {"base": ..., "path": ...}}``
    (or ``{name: "base:path"}``) as the adapters by name; raises ValueError when malformed."""
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        text = str(value or "").strip()
        if text.startswith("{"):
            items = list(json.loads(text).items())
        else:
            items = []
            for item in filter(None, (part.strip() for part in text.split(","))):
                name, sep, rest = item.partition("=")
                if not sep or not name.strip():
                    raise ValueError(f"expected 'name=base_model:path', got {item!r}")
                items.append((name.strip(), rest))
    return {str(name): _entry(str(name), entry) for name, entry in items}


def check_adapters(adapters: Mapping[str, RegisteredAdapter], models: Mapping[str, str]) -> None:
    """An adapter may not shadow a served model, and (when ``KVBATCH_MODELS`` names the
    served models) must belong to one of them: a typo is refused at start-up."""
    for adapter in adapters.values():
        if adapter.name in models:
            raise ValueError(f"adapter {adapter.name!r} has the name of a served model")
        if models and adapter.base not in models:
            raise ValueError(
                f"adapter {adapter.name!r} belongs to {adapter.base!r}, which KVBATCH_MODELS "
                f"does not serve (it serves {', '.join(sorted(models))})"
            )
