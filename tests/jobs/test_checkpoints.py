"""A running shard's checkpoint: whole or absent, read back by position, junk skipped."""

from __future__ import annotations

from pathlib import Path

from jobs.state.checkpoints import (
    CommittedLine,
    checkpoint_key,
    drop_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from jobs.storage import LocalStorage, WriterScope
from worker.output_lines import error_line

BATCH = "batch_0123abcd"


def committed(position: int) -> CommittedLine:
    line = error_line(f"c-{position}", "engine_error", "boom")
    return CommittedLine(position=position, ok=False, counts={"failed": 1}, line=line)


def test_a_checkpoint_is_read_back_by_position_and_rewritten_whole(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert read_checkpoint(storage, BATCH, 3) == {}, "no checkpoint yet"
    entries = [committed(0), committed(5), committed(2)]
    write_checkpoint(storage, BATCH, 3, entries[:2])
    write_checkpoint(storage, BATCH, 3, entries)
    back = read_checkpoint(storage, BATCH, 3)
    assert sorted(back) == [0, 2, 5]
    assert back[5] == entries[1]
    assert back[2].line.custom_id == "c-2" and back[2].counts == {"failed": 1}
    assert checkpoint_key(BATCH, 3).startswith(f"results/{BATCH}/"), "the finalizer cleans it"
    drop_checkpoint(storage, BATCH, 3)
    assert read_checkpoint(storage, BATCH, 3) == {}


def test_an_unreadable_line_is_recomputed_not_trusted(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with WriterScope(storage.writer(checkpoint_key(BATCH, 0))) as out:
        out.write(committed(1).model_dump_json().encode() + b"\n")
        out.write(b'{"position": 2, "ok": true}\n')  # no line, no counts
        out.write(b"not json\n")
    assert sorted(read_checkpoint(storage, BATCH, 0)) == [1]
