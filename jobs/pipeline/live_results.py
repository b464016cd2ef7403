"""A batch's result lines while it runs, page by page, each line served exactly once.

While the batch runs, lines come from the shards' result objects
(jobs/state/shard_ledger.py), in the order shards were done (``P:shards_order``): a shard is
appended once, when its two objects became final, and a done shard never runs again, so its
lines never change. The final files
are those same objects copied in shard order, so every line is byte-identical to its line
in the final output or error file.

Once the batch ended, the shard objects are gone: the rest is read from the final files,
skipping the lines the running part already served. A done shard's lines sit at a known
place in them (``P:shard_lines`` counts), and a shard that never ran contributed one stop
error per input line::

    output file:  | shard 0 outputs | shard 1 outputs | (shard 2 stopped: none) |
    error file:   | shard 0 errors  | shard 1 errors  | shard 2: a stop line each |
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from jobs.errors import JobsError, NotFound
from jobs.state.records import BatchRecord
from jobs.state.shard_ledger import result_key
from jobs.state.store import JobStore
from jobs.storage import ObjectNotFound, Storage, read_lines
from jobs.wire.results_cursor import ResultsCursor

Part = Literal["output", "error"]
PARTS: tuple[Part, Part] = ("output", "error")


@dataclass(slots=True)
class ResultsPage:
    lines: list[tuple[Part, bytes]] = field(default_factory=list)  # (part name, line bytes)
    cursor: ResultsCursor | None = None
    has_more: bool = False
    finished: bool = False  # the batch ended and every line was served


class _Ended(Exception):
    """The batch ended (its shard objects deleted) while a page was being read."""


class LiveResults:
    def __init__(self, store: JobStore, storage: Storage, max_line_bytes: int) -> None:
        self.store = store
        self.storage = storage
        self._max_line_bytes = max_line_bytes
        self._redis: Any = store.client

    def page(self, batch: BatchRecord, cursor: ResultsCursor, limit: int) -> ResultsPage:
        if not batch.status.is_terminal and cursor.final is None:
            try:
                return self._running_page(batch, cursor, limit)
            except _Ended:
                refreshed = self.store.load_batch(batch.id)
                assert refreshed is not None
                batch = refreshed
        if not batch.status.is_terminal:
            raise JobsError("this cursor is for an ended batch", param="after")
        return self._final_page(batch, cursor, limit)

    # -- while running ----------------------------------------------------------------------
    def _order(self, batch_id: str) -> list[int]:
        return [int(i) for i in self._redis.lrange(self.store.key("shards_order", batch_id), 0, -1)]

    def _lines(self, key: str) -> Iterator[bytes]:
        return (line for line in read_lines(self.storage, key, self._max_line_bytes) if line)

    def _running_page(self, batch: BatchRecord, cursor: ResultsCursor, limit: int) -> ResultsPage:
        order = self._order(batch.id)
        page = ResultsPage()
        pos, part, offset = cursor.pos, cursor.part, cursor.offset
        while pos < len(order) and len(page.lines) < limit:
            key = result_key(batch.id, order[pos], errors=part == 1)
            taken = 0
            try:
                for line in itertools.islice(self._lines(key), offset, None):
                    if len(page.lines) == limit:
                        break
                    page.lines.append((PARTS[part], line))
                    taken += 1
                else:
                    pos, part, offset = (pos, 1, 0) if part == 0 else (pos + 1, 0, 0)
                    continue
            except ObjectNotFound as exc:
                raise _Ended from exc
            offset += taken
        page.cursor = ResultsCursor(batch.id, pos, part, offset)
        page.has_more = len(page.lines) == limit
        return page

    # -- once ended ---------------------------------------------------------------------------
    def _served(self, batch: BatchRecord, cursor: ResultsCursor) -> dict[int, tuple[int, int]]:
        """Per shard: how many of its (output, error) lines the running part served."""
        order = self._order(batch.id)
        counts = self._counts(batch)
        served = {index: counts[index] for index in order[: cursor.pos]}
        if cursor.pos < len(order):
            index = order[cursor.pos]
            served[index] = (
                (cursor.offset, 0) if cursor.part == 0 else (counts[index][0], cursor.offset)
            )
        return served

    def _counts(self, batch: BatchRecord) -> dict[int, tuple[int, int]]:
        """Each shard's lines in the final (output, error) files, in shard order."""
        raw = self._redis.hgetall(self.store.key("shard_lines", batch.id))
        total = batch.counters.get("total", 0)
        counts = {}
        for index in range(batch.num_shards):
            if str(index) in raw:
                outputs, errors = raw[str(index)].split()
                counts[index] = (int(outputs), int(errors))
            else:  # stopped before it ran: one stop error per input line
                counts[index] = (0, min(batch.shard_size, total - index * batch.shard_size))
        return counts

    def _final_key(self, batch: BatchRecord, part: int) -> str | None:
        file_id = batch.output_file_id if part == 0 else batch.error_file_id
        if file_id is None:
            return None
        record = self.store.get_file(batch.tenant, file_id)
        if record is None:
            raise NotFound(f"the batch's {PARTS[part]} file {file_id} was deleted", param="after")
        return record.storage_key

    def _final_page(self, batch: BatchRecord, cursor: ResultsCursor, limit: int) -> ResultsPage:
        if (batch.metadata or {}).get("output_format") == "parquet":
            raise JobsError(
                "this batch ended with Parquet files: read them with /v1/files/{id}/content",
                param="after",
                code="results_in_files",
            )
        served = self._served(batch, cursor)
        counts = self._counts(batch)
        part, line_no = cursor.final or (0, 0)
        page = ResultsPage()
        while part < len(PARTS) and len(page.lines) < limit:
            owners = [
                (index, local)
                for index in range(batch.num_shards)
                for local in range(counts[index][part])
            ]
            key = self._final_key(batch, part)
            lines = self._lines(key) if key is not None else iter(())
            for line in itertools.islice(lines, line_no, None):
                if len(page.lines) == limit:
                    break
                # A line past the counts (a batch ended before they were kept) is served.
                index, local = owners[line_no] if line_no < len(owners) else (-1, 0)
                if local >= served.get(index, (0, 0))[part]:
                    page.lines.append((PARTS[part], line))
                line_no += 1
            else:
                part, line_no = part + 1, 0
        page.cursor = ResultsCursor(
            batch.id, cursor.pos, cursor.part, cursor.offset, (part, line_no)
        )
        page.finished = part == len(PARTS)
        page.has_more = not page.finished
        return page
