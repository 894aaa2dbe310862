"""The receive journal: an acknowledged instance survives any crash, once, and whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidsflux.receive import Spool, StoreOutcome
from bidsflux.receive._part10 import file_meta

STUDY, SERIES = "1.2.826.0.1.7", "1.2.826.0.1.7.1"
MR = "1.2.840.10008.5.1.4.1.1.4"
SEGMENT = 1 << 20


def _spool(root: Path) -> Spool:
    return Spool(root, journal_segment_bytes=SEGMENT, journal_spare=1)


def _receive(spool: Spool, writer, sop: str, data: bytes, *, file: bool = True) -> StoreOutcome | None:
    incoming = spool.begin(file_meta(MR, sop, "1.2.840.10008.1.2.1", "SCU"), writer)
    for start in range(0, len(data), 4000):
        incoming.write(memoryview(data)[start:start + 4000])
    assert incoming.journaled
    end = spool.append(incoming, STUDY, SERIES, sop, {"calling_aet": "SCU"})
    with incoming.file_bytes() as view:
        data = bytes(view)
    incoming.discard()
    if not file:
        return None  # the process dies before filing
    return spool.file(writer, data, STUDY, SERIES, sop, {}, end)


def _path(root: Path, sop: str) -> Path:
    return root / "incoming" / STUDY / SERIES / f"{sop}.dcm"


def test_journaled_instance_is_filed_with_its_meta(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    writer = spool.writer()
    assert _receive(spool, writer, "1.2.3.1", b"data set bytes") is StoreOutcome.STORED
    assert _receive(spool, writer, "1.2.3.1", b"data set bytes") is StoreOutcome.DUPLICATE
    assert _receive(spool, writer, "1.2.3.1", b"other bytes!!") is StoreOutcome.CONFLICT
    content = _path(tmp_path, "1.2.3.1").read_bytes()
    assert content[128:132] == b"DICM" and content.endswith(b"data set bytes")
    assert len(list((tmp_path / "conflicts" / STUDY).glob("*.dcm"))) == 1
    writer.close()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_acknowledged_but_not_filed_is_filed_at_restart(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    writer = spool.writer()
    _receive(spool, writer, "1.2.3.1", b"first")
    _receive(spool, writer, "1.2.3.2", b"second", file=False)
    spool.close()  # the process is gone; its lock with it
    again = _spool(tmp_path)
    assert again.recovered == 2  # both past the last checkpoint; the filed one is left alone
    assert _path(tmp_path, "1.2.3.2").read_bytes().endswith(b"second")
    assert _path(tmp_path, "1.2.3.1").read_bytes().endswith(b"first")
    assert list((tmp_path / "conflicts").iterdir()) == []
    again.close()
    assert _spool(tmp_path).recovered == 0  # replayed once, then forgotten


def test_a_file_cut_short_by_a_crash_is_rewritten(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    _receive(spool, spool.writer(), "1.2.3.1", b"x" * 50000)
    path = _path(tmp_path, "1.2.3.1")
    whole = path.read_bytes()
    path.write_bytes(whole[:1000])  # what a crash leaves of a file not yet flushed: a prefix
    spool.close()
    _spool(tmp_path)
    assert path.read_bytes() == whole


def test_a_torn_record_was_never_acknowledged(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    writer = spool.writer()
    _receive(spool, writer, "1.2.3.1", b"kept", file=False)
    _receive(spool, writer, "1.2.3.2", b"y" * 9000, file=False)
    segment = next((tmp_path / "journal").glob("seg-*.wal"))
    with open(segment, "r+b") as handle:  # the last record's payload half-written
        handle.seek(4096 + 8192 + 4096 + 5000)
        handle.write(b"\0" * 100)
    spool.close()
    again = _spool(tmp_path)
    assert again.recovered == 1
    assert _path(tmp_path, "1.2.3.1").exists() and not _path(tmp_path, "1.2.3.2").exists()


def test_completing_a_study_checkpoints_so_nothing_comes_back(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    writer = spool.writer()
    for n in range(5):
        _receive(spool, writer, f"1.2.3.{n}", b"z" * 3000)
    batch = spool.complete_study(STUDY)
    assert len(list(batch.path.rglob("*.dcm"))) == 5
    spool.close()
    assert _spool(tmp_path).recovered == 0
    assert not (tmp_path / "incoming" / STUDY).exists()


def test_recycled_segments_never_replay_their_old_records(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    writer = spool.writer()
    for n in range(40):  # several segments' worth
        _receive(spool, writer, f"1.2.3.{n}", b"w" * 60000)
    writer.close()
    spool.journal.checkpoint()
    assert list((tmp_path / "journal").glob("free-*.wal"))  # kept for reuse, old records inside
    second = spool.writer()
    _receive(spool, second, "1.2.9.9", b"new", file=False)
    spool.close()
    again = _spool(tmp_path)
    assert again.recovered == 1 and _path(tmp_path, "1.2.9.9").exists()


def test_replay_keeps_a_different_version_aside(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    _receive(spool, spool.writer(), "1.2.3.1", b"journaled version", file=False)
    spool.close()
    _path(tmp_path, "1.2.3.1").parent.mkdir(parents=True)
    _path(tmp_path, "1.2.3.1").write_bytes(b"a different, whole file")
    _spool(tmp_path)
    assert _path(tmp_path, "1.2.3.1").read_bytes() == b"a different, whole file"
    kept = list((tmp_path / "conflicts" / STUDY).glob("*.dcm"))
    assert len(kept) == 1 and kept[0].read_bytes().endswith(b"journaled version")


def test_instances_too_large_for_the_journal_take_the_direct_path(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    writer = spool.writer()
    incoming = spool.begin(file_meta(MR, "1.2.3.1", "1.2.840.10008.1.2.1", "SCU"), writer)
    big = b"b" * (writer.capacity + 10)
    incoming.write(big[:100])
    incoming.write(big[100:])
    assert not incoming.journaled
    assert spool.commit(incoming, STUDY, SERIES, "1.2.3.1") is StoreOutcome.STORED
    assert _path(tmp_path, "1.2.3.1").read_bytes().endswith(big)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_second_process_does_not_recover_a_live_spool(tmp_path: Path) -> None:
    owner = _spool(tmp_path)
    _receive(owner, owner.writer(), "1.2.3.1", b"live", file=False)
    other = Spool(tmp_path, journal_segment_bytes=SEGMENT)  # e.g. `bidsflux index` while serve runs
    assert other.recovered == 0 and list((tmp_path / "journal").glob("seg-*.wal"))
    assert not _path(tmp_path, "1.2.3.1").exists()


@pytest.mark.parametrize("bad", ["../x", "1.2/3", ""])
def test_journal_refuses_bad_uids_before_writing(tmp_path: Path, bad: str) -> None:
    spool = _spool(tmp_path)
    incoming = spool.begin(b"", spool.writer())
    incoming.write(b"data")
    with pytest.raises(ValueError):
        spool.append(incoming, bad, SERIES, "1.2.3", {})
