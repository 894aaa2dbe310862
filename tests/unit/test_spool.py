"""The durable spool: filing instances, resends, conflicts, batches and quarantine."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from bidsflux.receive.spool import Batch, Spool, StoreOutcome, atomic_write

STUDY = "1.2.826.0.1.3680043.1"
SERIES = "1.2.826.0.1.3680043.1.1"
SOP = "1.2.826.0.1.3680043.1.1.1"


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (relative), with file contents; folders map to None."""
    return {
        str(path.relative_to(root)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(root.rglob("*"))
    }


def temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.startswith(".tmp-")]


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def test_new_spool_has_its_folders(tmp_path: Path) -> None:
    Spool(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.name != ".receiver.lock") == ["complete", "conflicts", "incoming", "journal",
                                                                   "quarantine", "tmp"]


def test_store_files_the_instance(spool: Spool) -> None:
    assert spool.store(STUDY, SERIES, SOP, b"DICM-bytes") is StoreOutcome.STORED
    path = spool.root / "incoming" / STUDY / SERIES / f"{SOP}.dcm"
    assert path.read_bytes() == b"DICM-bytes"
    assert spool.receiving_studies() == [STUDY]
    assert temp_files(spool.root) == []


def test_identical_resend_is_a_duplicate_and_changes_nothing(spool: Spool) -> None:
    spool.store(STUDY, SERIES, SOP, b"same")
    path = spool.root / "incoming" / STUDY / SERIES / f"{SOP}.dcm"
    before = tree(spool.root)
    inode, mtime = path.stat().st_ino, path.stat().st_mtime_ns
    assert spool.store(STUDY, SERIES, SOP, b"same") is StoreOutcome.DUPLICATE
    assert tree(spool.root) == before
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (inode, mtime)


def test_different_bytes_are_a_conflict_kept_aside(spool: Spool) -> None:
    spool.store(STUDY, SERIES, SOP, b"original")
    assert spool.store(STUDY, SERIES, SOP, b"other bytes") is StoreOutcome.CONFLICT
    assert (spool.root / "incoming" / STUDY / SERIES / f"{SOP}.dcm").read_bytes() == b"original"
    kept = list((spool.root / "conflicts" / STUDY).glob("*.dcm"))
    assert len(kept) == 1
    digest = hashlib.sha256(b"other bytes").hexdigest()[:16]
    assert kept[0].name == f"{SOP}.{digest}.dcm"
    assert kept[0].read_bytes() == b"other bytes"
    # ... with the reason beside it, for the ledger
    why = json.loads(kept[0].with_suffix(".json").read_text())
    assert why["sop"] == SOP and why["series"] == SERIES and "different bytes" in why["reason"]
    # the same conflicting resend again is kept once
    assert spool.store(STUDY, SERIES, SOP, b"other bytes") is StoreOutcome.CONFLICT
    assert len(list((spool.root / "conflicts" / STUDY).glob("*.dcm"))) == 1
    assert temp_files(spool.root) == []


def test_keep_conflict_returns_the_path(spool: Spool) -> None:
    path = spool.keep_conflict(STUDY, SOP, b"v2")
    assert path.parent == spool.root / "conflicts" / STUDY
    assert path.read_bytes() == b"v2"
    assert spool.keep_conflict(STUDY, SOP, b"v2") == path


@pytest.mark.parametrize("where", ["study", "series", "sop"])
@pytest.mark.parametrize("bad", ["../x", "1.2/3", "", "1" * 65, "..", "1.2\n", "1.2.3/../../../etc", "1.2.x"])
def test_invalid_uid_raises_and_writes_nothing(spool: Spool, where: str, bad: str) -> None:
    uids = {"study": STUDY, "series": SERIES, "sop": SOP}
    uids[where] = bad
    outside = spool.root.parent
    before = tree(outside)
    with pytest.raises(ValueError, match="not a valid DICOM UID"):
        spool.store(uids["study"], uids["series"], uids["sop"], b"payload")
    assert tree(outside) == before


def test_receiving_studies_ignores_stray_folders(spool: Spool) -> None:
    spool.store("1.2.2", "1.2.2.1", "1.2.2.1.1", b"x")
    spool.store("1.2.1", "1.2.1.1", "1.2.1.1.1", b"y")
    (spool.root / "incoming" / "not-a-uid").mkdir()
    (spool.root / "incoming" / "1.2.9").write_bytes(b"a file, not a folder")
    assert spool.receiving_studies() == ["1.2.1", "1.2.2"]


def test_last_change_is_positive_after_store(spool: Spool) -> None:
    spool.store(STUDY, SERIES, SOP, b"x")
    series_dir = spool.root / "incoming" / STUDY / SERIES
    assert spool.last_change(STUDY) == series_dir.stat().st_mtime


def test_complete_study_moves_the_folder(spool: Spool) -> None:
    spool.store(STUDY, SERIES, SOP, b"x")
    spool.store(STUDY, SERIES, SOP + "2", b"y")
    batch = spool.complete_study(STUDY)
    assert isinstance(batch, Batch)
    assert batch.study_uid == STUDY
    assert batch.path == spool.root / "complete" / f"{STUDY}@{batch.batch_id}"
    assert batch.batch_id.isdigit()
    assert (batch.path / SERIES / f"{SOP}.dcm").read_bytes() == b"x"
    assert not (spool.root / "incoming" / STUDY).exists()
    assert spool.receiving_studies() == []
    assert spool.batches() == [batch]


def test_batches_oldest_first(spool: Spool) -> None:
    made = []
    for uid in ("1.9", "1.1", "1.5"):
        spool.store(uid, uid + ".1", uid + ".1.1", uid.encode())
        made.append(spool.complete_study(uid))
    # the same study again, a later batch
    spool.store("1.9", "1.9.1", "1.9.1.2", b"later")
    made.append(spool.complete_study("1.9"))
    assert [b.batch_id for b in made] == sorted((b.batch_id for b in made), key=int)
    assert spool.batches() == made
    assert [b.study_uid for b in spool.batches()] == ["1.9", "1.1", "1.5", "1.9"]


def test_batches_skip_stray_entries(spool: Spool) -> None:
    spool.store(STUDY, SERIES, SOP, b"x")
    batch = spool.complete_study(STUDY)
    (spool.root / "complete" / "no-at-sign").mkdir()
    (spool.root / "complete" / "bad-uid@123").mkdir()
    (spool.root / "complete" / "1.2.3@456").write_bytes(b"file, not a folder")
    (spool.root / "complete" / "1.2.3@copy").mkdir()
    (spool.root / "complete" / "1.2.4@").mkdir()
    assert spool.batches() == [batch]


def test_quarantine_batch_moves_and_says_why(spool: Spool) -> None:
    spool.store(STUDY, SERIES, SOP, b"x")
    batch = spool.complete_study(STUDY)
    target = spool.quarantine_batch(batch, "template field {ReferringPhysicianName} is empty")
    assert target == spool.root / "quarantine" / batch.path.name
    assert not batch.path.exists()
    assert spool.batches() == []
    assert (target / SERIES / f"{SOP}.dcm").read_bytes() == b"x"
    reason = json.loads((target / "reason.json").read_text())
    assert reason == {"study": STUDY, "reason": "template field {ReferringPhysicianName} is empty"}
    assert temp_files(spool.root) == []


def test_quarantine_bytes_keeps_data_and_reason(spool: Spool) -> None:
    path = spool.quarantine_bytes(b"undecodable", "bad UID", {"calling_aet": "X", "peer": "1.2.3.4"})
    assert path.read_bytes() == b"undecodable"
    assert path.parent.parent == spool.root / "quarantine"
    [why] = path.parent.glob(path.name[: -len(".dcm")] + ".*.reason.json")
    reason = json.loads(why.read_text())
    assert reason == {"reason": "bad UID", "calling_aet": "X", "peer": "1.2.3.4"}
    assert spool.batches() == []
    assert temp_files(spool.root) == []


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write(target, b"first")
    big = bytes(range(256)) * 40_000
    atomic_write(target, big)
    assert target.read_bytes() == big
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_concurrent_stores_of_one_instance_lose_nothing(spool: Spool) -> None:
    """Several associations resending one SOP with different bytes: one is filed, every other is kept."""
    for round_ in range(20):
        sop = f"{SOP}.{round_}"
        payloads = [f"version {n} of {round_}".encode() for n in range(6)]
        start = threading.Barrier(len(payloads))
        outcomes: list[StoreOutcome] = []

        def send(data: bytes) -> None:
            start.wait()
            outcomes.append(spool.store(STUDY, SERIES, sop, data))

        threads = [threading.Thread(target=send, args=(data,)) for data in payloads]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(outcomes) == sorted([StoreOutcome.STORED] + [StoreOutcome.CONFLICT] * 5), round_
        filed = (spool.root / "incoming" / STUDY / SERIES / f"{sop}.dcm").read_bytes()
        kept = {p.read_bytes() for p in (spool.root / "conflicts" / STUDY).glob(f"{sop}.*.dcm")}
        assert kept | {filed} == set(payloads)
        assert filed not in kept
    assert temp_files(spool.root) == []


def test_instances_leave_no_temporary_files(spool: Spool) -> None:
    spool.store(STUDY, SERIES, SOP, b"x")
    spool.store(STUDY, SERIES, SOP, b"x")
    spool.store(STUDY, SERIES, SOP, b"y")
    assert list((spool.root / "tmp").iterdir()) == []


def test_recover_removes_what_was_never_acknowledged(tmp_path: Path) -> None:
    first = Spool(tmp_path / "s")
    (tmp_path / "s" / "tmp" / "recv-0123").write_bytes(b"half an instance")
    (tmp_path / "s" / "tmp" / "import-fresh").mkdir()  # an import another process is doing right now
    first.close()
    Spool(tmp_path / "s")
    assert [p.name for p in (tmp_path / "s" / "tmp").iterdir()] == ["import-fresh"]


def test_only_one_owner_recovers(tmp_path: Path) -> None:
    owner = Spool(tmp_path / "s")
    (tmp_path / "s" / "tmp" / "recv-live").write_bytes(b"being received by the owner")
    Spool(tmp_path / "s")  # e.g. `bidsflux index` next to `bidsflux serve`
    assert (tmp_path / "s" / "tmp" / "recv-live").exists()
    owner.close()


def test_batches_by_priority_then_age(spool: Spool) -> None:
    made = []
    for uid, priority in (("1.1", 0), ("1.2", 5), ("1.3", 0)):
        spool.store(uid, uid + ".1", uid + ".1.1", b"x")
        made.append(spool.complete_study(uid, lambda folder, p=priority: {
            "route.json": json.dumps({"priority": p}).encode()}))
    assert [b.study_uid for b in spool.batches()] == ["1.2", "1.1", "1.3"]
