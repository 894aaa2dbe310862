"""Replaying the receive journal after a crash: every record past the checkpoint, filed again.

Records are read segment by segment from the checkpointed offset; the first
record whose header or checksum does not hold ends a segment (it was being
written when the process died, so it was never acknowledged).  A recycled
segment's old records carry their old segment number and end it too.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._journal import _HEADER, BLOCK, MAGIC, Journal, _round, _seq, atomic_json, sync_filesystem


def records(journal: Journal) -> Iterator[tuple[Path, int, dict[str, Any], bytes]]:
    """Every valid record past the checkpoint, segment by segment."""
    saved = journal.saved()
    for path in sorted(journal.folder.glob("seg-*.wal")):
        seq, pos = _seq(path), saved.get(_seq(path), 0)
        with open(path, "rb") as handle:
            while True:
                handle.seek(pos)
                block = handle.read(BLOCK)
                record = _parse_head(block, seq, pos)
                if record is None:
                    break
                meta, payload_length = record
                payload = handle.read(payload_length)
                if len(payload) != payload_length or zlib.crc32(payload) != _HEADER.unpack_from(block)[7]:
                    break
                yield path, pos, meta, payload
                pos += BLOCK + _round(payload_length)


def replay(journal: Journal, file_record: Callable[[dict[str, Any], bytes], None]) -> int:
    """File every record past the checkpoint again; then start afresh. Returns how many."""
    count = 0
    for _path, _pos, meta, payload in records(journal):
        file_record(meta, payload)
        count += 1
    segments = sorted(journal.folder.glob("seg-*.wal"))
    if segments or count:
        sync_filesystem(journal.sync_root)
        atomic_json(journal.folder / "checkpoint.json", {"next": journal.next_seq, "filed": {}})
        for path in segments:
            journal.recycle(path)
    for stray in journal.folder.glob(".zero-*"):
        stray.unlink()
    return count


def _parse_head(block: bytes, seq: int, pos: int) -> tuple[dict[str, Any], int] | None:
    if len(block) < BLOCK or block[:4] != MAGIC:
        return None
    magic, version, _, r_seq, r_pos, payload_length, meta_length, _pcrc, meta_crc, head_crc = \
        _HEADER.unpack_from(block)
    if version != 1 or r_seq != seq or r_pos != pos or meta_length > BLOCK - _HEADER.size:
        return None
    if zlib.crc32(block[:_HEADER.size - 4]) != head_crc:
        return None
    meta_raw = block[_HEADER.size:_HEADER.size + meta_length]
    if zlib.crc32(meta_raw) != meta_crc:
        return None
    try:
        return json.loads(meta_raw), payload_length
    except ValueError:
        return None
