"""A running shard's finished lines, committed as it goes, so a rerun does not pay for them.

A shard's results become final only as a whole (jobs/state/shard_ledger.py), so without
this a worker killed at 90 % of a shard would have its rerun compute all of it again.
While a shard runs, its finished lines are written every few seconds or every N lines to
one object beside its results, rewritten whole each time (so it is always complete or
absent):

    results/{batch}/{shard:05d}.partial.jsonl
        {"position": 3, "ok": true, "counts": {"completed": 1, ...}, "line": {...}}

A rerun reads it first and runs only the lines that are not in it. Exactly once still
holds: the rerun takes back everything earlier runs counted (``take_back_counts``) and
counts the committed lines again from their recorded ``counts``; the shard's final objects
are written whole, from committed and new answers together, as before. The object lives
under the results prefix, which the finalizer deletes with the batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from jobs.state.shard_ledger import results_prefix
from jobs.storage import ObjectNotFound, Storage, WriterScope, read_lines
from jobs.wire.lines import OutputLine

log = logging.getLogger(__name__)

# Output lines can be far longer than input lines (embeddings); a longer one is dropped
# from the checkpoint and simply recomputed.
MAX_COMMITTED_LINE_BYTES = 64 * 1024 * 1024


@dataclass(slots=True, frozen=True)
class CommitPolicy:
    """Commit once this many lines finished since the last commit, or this long passed."""

    every_lines: int = 8
    every_s: float = 2.0


class CommittedLine(BaseModel):
    position: int
    ok: bool
    counts: dict[str, int]
    line: OutputLine


def checkpoint_key(batch_id: str, index: int) -> str:
    return f"{results_prefix(batch_id)}{index:05d}.partial.jsonl"


def write_checkpoint(
    storage: Storage, batch_id: str, index: int, committed: list[CommittedLine]
) -> None:
    """Replace the shard's checkpoint with ``committed`` (all its finished lines so far)."""
    with WriterScope(storage.writer(checkpoint_key(batch_id, index))) as out:
        for entry in committed:
            out.write(entry.model_dump_json().encode() + b"\n")


def read_checkpoint(storage: Storage, batch_id: str, index: int) -> dict[int, CommittedLine]:
    """The lines earlier runs of the shard committed, by position (none if no checkpoint)."""
    committed: dict[int, CommittedLine] = {}
    key = checkpoint_key(batch_id, index)
    try:
        for raw in read_lines(storage, key, MAX_COMMITTED_LINE_BYTES):
            if raw is None:
                continue
            try:
                entry = CommittedLine.model_validate_json(raw)
            except ValidationError:
                log.warning("skipping an unreadable line of %s", key)
                continue
            committed[entry.position] = entry
    except ObjectNotFound:
        return {}
    return committed


def drop_checkpoint(storage: Storage, batch_id: str, index: int) -> None:
    storage.delete(checkpoint_key(batch_id, index))
