"""Bounds on what one file or batch may ask of the system; the API fills them from settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class Limits:
    """OpenAI's published limits are the defaults; every one is configurable."""

    max_requests_per_file: int = 50_000
    max_file_bytes: int = 200_000_000
    # A line may hold a large schema or document: 16 MB leaves a 10 MB JSON schema to the
    # schema bound (a 400 line) instead of failing the whole file.
    max_line_bytes: int = 16_000_000
    max_n: int = 8
    max_tokens: int = 4096
    max_stop_sequences: int = 4
    max_embedding_inputs: int = 2048  # inputs in one /v1/embeddings line
    max_errors_reported: int = 100
    shard_size: int = 256
    max_metadata_pairs: int = 16
    max_metadata_key_chars: int = 64
    max_metadata_value_chars: int = 512
    max_completion_window_hours: int = 24
    served_models: frozenset[str] = field(default_factory=frozenset)
