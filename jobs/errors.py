"""Errors the jobs room raises for bad input; the API turns them into OpenAI error bodies."""

from __future__ import annotations


class JobsError(Exception):
    """A request the caller must fix: ``status`` is the HTTP status it maps to."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class NotFound(JobsError):
    status = 404
    error_type = "invalid_request_error"
