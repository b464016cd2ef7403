"""The opaque cursor of ``GET /v1/batches/{id}/results``: where a reader stopped, signed.

A cursor names a point in the stream of one batch's result lines (jobs/pipeline/live_results.py)::

    running:  shards in the order they were done   order[pos], part 0 = outputs, 1 = errors,
              ``offset`` lines of that part already read
    final:    once the batch ended, the rest of its output (file 0) and error (file 1) files,
              read from line ``line`` of ``file`` on, skipping what the running part served

It travels as ``base64url(json) "." base64url(hmac)``; the HMAC (SHA-256 with the service's
cursor secret) makes a forged or edited cursor a clear 400, and the batch id inside it makes
a cursor of another batch (or another tenant's) one too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

from jobs.errors import JobsError

_SIG_BYTES = 16


class InvalidResultsCursor(JobsError):
    def __init__(self, message: str) -> None:
        super().__init__(message, param="after", code="invalid_cursor")


@dataclass(frozen=True, slots=True)
class ResultsCursor:
    batch_id: str
    pos: int = 0
    part: int = 0
    offset: int = 0
    final: tuple[int, int] | None = None  # (file, line) once reading the final files


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    def __init__(self, secret: bytes) -> None:
        assert secret, "a cursor secret is required"
        self._secret = secret

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:_SIG_BYTES]

    def encode(self, cursor: ResultsCursor) -> str:
        fields = [cursor.batch_id, cursor.pos, cursor.part, cursor.offset, cursor.final]
        payload = json.dumps(fields, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, token: str, batch_id: str) -> ResultsCursor:
        """The cursor in ``token``; raises unless this service signed it for ``batch_id``."""
        head, sep, tail = token.partition(".")
        try:
            payload, signature = _unb64(head), _unb64(tail)
        except (binascii.Error, ValueError) as exc:
            raise InvalidResultsCursor("'after' is not a results cursor") from exc
        if not sep or not hmac.compare_digest(signature, self._sign(payload)):
            raise InvalidResultsCursor("'after' is not a cursor this service issued")
        owner, pos, part, offset, final = json.loads(payload)
        if owner != batch_id:
            raise InvalidResultsCursor("'after' is a cursor of another batch")
        return ResultsCursor(owner, pos, part, offset, tuple(final) if final else None)
