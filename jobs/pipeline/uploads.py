"""Rules for an uploaded file: which purposes we take and when it expires."""

from __future__ import annotations

import re
import unicodedata

from jobs.errors import JobsError
from jobs.state.ids import FileId, TenantId
from jobs.state.records import FileRecord

ACCEPTED_PURPOSES = ("batch",)
MIN_EXPIRY_S = 3600
MAX_EXPIRY_S = 30 * 24 * 3600


def file_storage_key(file_id: str) -> str:
    return f"files/{file_id}"


def _expiry(fields: dict[str, str], created_at: int, default_ttl_s: int) -> int:
    """``expires_after[anchor]=created_at`` + ``expires_after[seconds]=N``, as the SDK sends."""
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return created_at + default_ttl_s
    if anchor != "created_at":
        raise JobsError("expires_after.anchor must be 'created_at'", param="expires_after.anchor")
    if seconds is None or not seconds.isdigit():
        raise JobsError("expires_after.seconds must be an integer", param="expires_after.seconds")
    if not MIN_EXPIRY_S <= int(seconds) <= MAX_EXPIRY_S:
        raise JobsError(
            f"expires_after.seconds must be between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}",
            param="expires_after.seconds",
        )
    return created_at + int(seconds)


def safe_filename(filename: str) -> str:
    """The name's last path part, without control characters, at most 255 characters.

    A client names the upload; the name comes back in every file listing and download, so
    ``../../etc/passwd`` or a name carrying terminal escapes is stored as its harmless base
    (``passwd``).
    """
    base = re.split(r"[/\\]", filename)[-1]
    cleaned = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    if cleaned in ("", ".", ".."):
        cleaned = "upload.jsonl"
    return cleaned[:255]


def new_file_record(
    *,
    file_id: FileId,
    tenant: TenantId,
    filename: str,
    size: int,
    fields: dict[str, str],
    created_at: int,
    default_ttl_s: int,
) -> FileRecord:
    """The record of a file whose bytes are already stored; raises on bad form fields."""
    purpose = fields.get("purpose")
    if purpose is None:
        raise JobsError("missing required parameter: purpose", param="purpose")
    if purpose not in ACCEPTED_PURPOSES:
        raise JobsError(
            f"purpose must be one of {', '.join(ACCEPTED_PURPOSES)}, got {purpose!r}",
            param="purpose",
            code="invalid_purpose",
        )
    unknown = sorted(set(fields) - {"purpose", "expires_after[anchor]", "expires_after[seconds]"})
    if unknown:
        raise JobsError(f"unsupported parameter: {unknown[0]}", param=unknown[0])
    return FileRecord(
        id=file_id,
        tenant=tenant,
        bytes=size,
        created_at=created_at,
        filename=safe_filename(filename),
        purpose=purpose,
        storage_key=file_storage_key(file_id),
        expires_at=_expiry(fields, created_at, default_ttl_s),
    )
