"""Object storage for uploaded files, shards and outputs: a local directory or S3."""

from jobs.storage.base import (
    ObjectNotFound,
    ObjectWriter,
    Storage,
    WriterScope,
    read_lines,
)
from jobs.storage.local import LocalStorage
from jobs.storage.s3 import S3Storage

__all__ = [
    "LocalStorage",
    "ObjectNotFound",
    "ObjectWriter",
    "S3Storage",
    "Storage",
    "WriterScope",
    "read_lines",
]
