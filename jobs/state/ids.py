"""Identifiers for files and batches: unguessable, so knowing one id reveals no other."""

from __future__ import annotations

import secrets
from typing import NewType

FileId = NewType("FileId", str)
BatchId = NewType("BatchId", str)
TenantId = NewType("TenantId", str)

# 24 random bytes: 192 bits, far beyond enumeration, short enough for URLs and logs.
_ID_BYTES = 24


def new_file_id() -> FileId:
    return FileId(f"file-{secrets.token_hex(_ID_BYTES)}")


def new_batch_id() -> BatchId:
    return BatchId(f"batch_{secrets.token_hex(_ID_BYTES)}")


def new_request_id() -> str:
    """Id of one output line (``batch_req_...``), as OpenAI names them."""
    return f"batch_req_{secrets.token_hex(16)}"
