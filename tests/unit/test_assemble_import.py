"""A study folder from another receiver (storescp, mercure) becomes a completed batch."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from bidsflux.assemble import import_folder
from bidsflux.ledger import Ledger, State
from bidsflux.receive import Spool
from bidsflux.routing import Route, Rules, parse_rules
from bidsflux.scanner import StudySpec, study_uid, write_study


@pytest.fixture
def parts(tmp_path: Path):
    spool = Spool(tmp_path / "spool", recover=False)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    yield spool, ledger
    ledger.close()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_study(StudySpec(seed=3), tmp_path_factory.mktemp("study"))


def _copy(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True)
    for path in files:
        (folder / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())


def test_import_makes_one_batch_with_route_and_ledger(parts, study: list[Path], tmp_path: Path) -> None:
    spool, ledger = parts
    folder = tmp_path / "st_20240312_101010"
    _copy(study, folder)
    (folder / "notes.txt").write_text("not DICOM")
    rules = parse_rules("rules:\n  - name: demo\n    match: {StudyDescription: '^Doe'}\n    priority: 3\n",
                        "r.yml", Route(group_template="{ReferringPhysicianName}"))
    result = import_folder(spool, ledger, rules, folder, source="storescp", calling_aet="SCANNER",
                           peer="10.0.0.5", remove=True)
    [batch] = result.batches
    uid = study_uid(StudySpec(seed=3))
    assert batch.study_uid == uid and result.instances == len(study)
    assert result.skipped == [(str(folder / "notes.txt"), "no DICOM preamble")]
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # imported files removed, the rest left
    kept = sorted(batch.path.rglob("*.dcm"))
    assert len(kept) == len(study)
    for path in kept:  # exactly the bytes the receiver wrote, under <series>/<sop>.dcm
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert path.parent.name == ds.SeriesInstanceUID and path.name == f"{ds.SOPInstanceUID}.dcm"
    assert json.loads((batch.path / "route.json").read_text())["rule"] == "demo"
    assert json.loads((batch.path / "batch.json").read_text())["source"] == "storescp"
    record = ledger.require(uid)
    assert record.state is State.COMPLETE and record.completion_reason == "imported from storescp"
    assert (record.calling_aet, record.peer, record.instances) == ("SCANNER", "10.0.0.5", len(study))
    assert record.details["route"]["priority"] == 3
    assert list((spool.root / "tmp").iterdir()) == []


def test_import_again_is_an_amendment_and_keeps_sources_without_remove(parts, study: list[Path],
                                                                          tmp_path: Path) -> None:
    spool, ledger = parts
    _copy(study[:5], tmp_path / "a")
    _copy(study[5:9], tmp_path / "b")
    import_folder(spool, ledger, Rules(), tmp_path / "a", source="mercure")
    [batch] = import_folder(spool, ledger, Rules(), tmp_path / "b", source="mercure").batches
    assert json.loads((batch.path / "batch.json").read_text())["amendment"] is True
    assert len(list((tmp_path / "b").iterdir())) == 4  # not removed
    (tmp_path / "b" / f"{study[5].parent.name}-{study[5].name}").write_bytes(b"changed later")
    assert all(p.read_bytes() != b"changed later" for p in batch.path.rglob("*.dcm"))  # a copy, not a link


def test_duplicates_conflicts_and_unfileable_files(parts, study: list[Path], tmp_path: Path) -> None:
    spool, ledger = parts
    folder = tmp_path / "in"
    _copy(study[:3], folder)
    (folder / "again.dcm").write_bytes(study[0].read_bytes())
    changed = bytearray(study[1].read_bytes())
    changed[-1] ^= 0xFF
    (folder / "changed.dcm").write_bytes(bytes(changed))
    broken = bytearray(study[2].read_bytes())
    broken[128 + 4:] = b"\x02\x00" + bytes(200)  # a preamble, then nonsense
    (folder / "broken.dcm").write_bytes(bytes(broken))
    result = import_folder(spool, ledger, Rules(), folder, source="storescp")
    assert (result.instances, result.duplicates, result.conflicts) == (3, 1, 1)
    assert len(result.quarantined) == 1 and result.quarantined[0][0].endswith("broken.dcm")
    uid = study_uid(StudySpec(seed=3))
    assert len(list((spool.conflicts / uid).glob("*.dcm"))) == 1
