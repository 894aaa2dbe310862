"""When a study is complete, and what its batch and the ledger say about it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian

from bidsflux.assemble import AssembleOptions, Assembler
from bidsflux.assemble._completion import Progress, Timing, decide, missing_series
from bidsflux.ledger import Ledger, State
from bidsflux.receive import AssociationRecord, ReceiveState, Spool, StoreOutcome
from bidsflux.routing import Route, parse_rules

STUDY = "1.2.826.0.1.9"
TIMING = Timing(quiet_period=60, association_end_quiet=10, force_after=3600)


def _progress(first: float = 0, last: float = 100, receiving: bool = False, ended: float | None = None) -> Progress:
    return Progress(first, last, receiving, ended)


@pytest.mark.parametrize(("now", "progress", "expected", "missing", "reason"), [
    (105, _progress(receiving=True), False, [], None),  # still sending
    (160, _progress(receiving=True), False, [], "quiet for 60s"),  # a hung sender still completes
    (3600, _progress(last=3590, receiving=True), False, [], "forced after 3600s since the first instance"),
    (105, _progress(ended=101), False, [], None),  # association ended, hint not yet due
    (112, _progress(ended=101), False, [], "association ended 10s ago"),
    (112, _progress(ended=101), True, ["T2w"], None),  # expected series missing: wait for them
    (160, _progress(ended=101), True, ["T2w"], "quiet for 60s; expected series missing: T2w"),
    (102, _progress(ended=101), True, [], "all expected series received and the association ended"),
    (150, _progress(), False, [], None),  # after a restart: no association known, only the quiet period
])
def test_decide(now: float, progress: Progress, expected: bool, missing: list[str], reason: str | None) -> None:
    assert decide(now, progress, TIMING, expected=expected, missing=missing) == reason


def test_missing_series() -> None:
    patterns = [re.compile("anat-T1w"), re.compile("^func-bold")]
    assert missing_series(patterns, ["anat-T1w_RMS", "scout"]) == ["^func-bold"]
    assert missing_series(patterns, ["anat-T1w", "func-bold_run-1"]) == []


def _dicom(series: str, sop: str, description: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription = STUDY, series, description
    ds.PatientID = "SUB01"
    buffer = DicomBytesIO()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _store(spool: Spool, state: ReceiveState, association: AssociationRecord, series: str, sop: str,
           description: str = "anat-T1w") -> None:
    data = _dicom(series, sop, description)
    outcome = spool.store(STUDY, series, sop, data)
    state.record(STUDY, series, len(data), outcome, association, description=description)


@pytest.fixture
def parts(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    yield spool, ReceiveState(), ledger
    ledger.close()


def test_association_end_completes_with_route_batch_and_ledger(parts) -> None:
    spool, state, ledger = parts
    rules = parse_rules("rules:\n  - name: lab\n    match: {StudyInstanceUID: '^1\\.2\\.826'}\n    priority: 5\n"
                        "    pipelines: [mriqc]\n", "rules.yml", Route(group_template="{PatientID}"))
    assembler = Assembler(spool, state, ledger, 60, options=AssembleOptions(10, 3600, rules))
    first = state.association_opened("SCANNER", "10.0.0.5:4000", False)
    _store(spool, state, first, "1.2.826.0.1.9.1", "1.2.826.0.1.9.1.1")
    _store(spool, state, first, "1.2.826.0.1.9.2", "1.2.826.0.1.9.2.1", "func-bold")
    assert assembler.tick() == []
    state.association_closed(first, released=True)
    assert assembler.tick(now=time.time() + 5) == []
    [batch] = assembler.tick(now=time.time() + 11)
    assert json.loads((batch.path / "route.json").read_text()) == {
        "rule": "lab", "group_template": "{PatientID}", "s3_url_pattern": None, "pipelines": ["mriqc"],
        "priority": 5, "ignore": False, "expected_series": []}
    info = json.loads((batch.path / "batch.json").read_text())
    assert info["instances"] == 2 and not info["amendment"] and info["source"] == "dicom"
    assert info["series"]["1.2.826.0.1.9.2"]["description"] == "func-bold"
    record = ledger.require(STUDY)
    assert record.state is State.COMPLETE and record.completion_reason == "association ended 10s ago"
    assert (record.calling_aet, record.peer, record.instances, record.series) == ("SCANNER", "10.0.0.5:4000", 2, 2)
    assert record.details["route"]["rule"] == "lab"
    assert record.details["series"]["1.2.826.0.1.9.1"]["instances"] == 1
    assert record.details["associations"][0]["calling_aet"] == "SCANNER"
    assert record.details["associations"][0]["instances"] == 2
    assert spool.batches() == [batch]


def test_expected_series_and_amendment(parts) -> None:
    spool, state, ledger = parts
    rules = parse_rules("default:\n  expected_series: ['T1w', 'bold']\n", "rules.yml", Route())
    assembler = Assembler(spool, state, ledger, 60, options=AssembleOptions(10, 3600, rules))
    association = state.association_opened("SCANNER", "10.0.0.5:4000", False)
    _store(spool, state, association, "1.2.826.0.1.9.1", "1.2.826.0.1.9.1.1", "anat-T1w")
    state.association_closed(association, released=True)
    assert assembler.tick(now=time.time() + 30) == []  # the bold series is still missing
    second = state.association_opened("SCANNER", "10.0.0.5:4001", False)
    _store(spool, state, second, "1.2.826.0.1.9.2", "1.2.826.0.1.9.2.1", "func-bold")
    assert assembler.tick() == []  # its association is still open
    state.association_closed(second, released=True)
    [batch] = assembler.tick()
    assert ledger.require(STUDY).completion_reason == "all expected series received and the association ended"
    assert len(ledger.require(STUDY).details["associations"]) == 2
    # a late series: a new batch of the same study, flagged as an amendment
    late = state.association_opened("SCANNER", "10.0.0.5:4002", False)
    _store(spool, state, late, "1.2.826.0.1.9.3", "1.2.826.0.1.9.3.1", "T2w")
    state.association_closed(late, released=True)
    [amendment] = assembler.tick(now=time.time() + 61)
    assert json.loads((amendment.path / "batch.json").read_text())["amendment"] is True
    record = ledger.require(STUDY)
    assert [b["amendment"] for b in record.details["batches"]] == [False, True]
    assert record.series == 3 and record.instances == 3


def test_after_a_restart_the_quiet_period_completes_spooled_studies(parts, tmp_path: Path) -> None:
    spool, _, ledger = parts
    spool.store(STUDY, "1.2.826.0.1.9.1", "1.2.826.0.1.9.1.1", b"before the restart")
    assembler = Assembler(Spool(tmp_path / "spool", recover=False), ReceiveState(), ledger, 60)
    assert assembler.tick() == []
    [batch] = assembler.tick(now=time.time() + 61)
    assert ledger.require(STUDY).completion_reason == "quiet for 60s"
    assert (batch.path / "1.2.826.0.1.9.1" / "1.2.826.0.1.9.1.1.dcm").exists()


def test_conflicts_and_quarantined_instances_reach_the_ledger(parts) -> None:
    spool, state, ledger = parts
    association = state.association_opened("SCANNER", "10.0.0.5:4000", False)
    _store(spool, state, association, "1.2.826.0.1.9.1", "1.2.826.0.1.9.1.1")
    assert spool.store(STUDY, "1.2.826.0.1.9.1", "1.2.826.0.1.9.1.1", b"other") is StoreOutcome.CONFLICT
    spool.quarantine_bytes(b"\0garbage", "unreadable data set: no StudyInstanceUID",
                           {"calling_aet": "EVIL", "peer": "10.6.6.6:1", "at": 1.5})
    ledger.transition(STUDY, State.RECEIVING)
    assembler = Assembler(spool, state, ledger, 60)
    assembler.tick()
    conflicts = ledger.require(STUDY).details["conflicts"]
    [(_, conflict)] = conflicts.items()
    assert conflict["sop"] == "1.2.826.0.1.9.1.1" and "different bytes" in conflict["reason"]
    [rejected] = ledger.studies([State.QUARANTINED])
    assert rejected.study_uid.startswith("rejected-") and rejected.error == "unreadable data set: no StudyInstanceUID"
    assert (rejected.calling_aet, rejected.peer) == ("EVIL", "10.6.6.6:1")
    assembler.tick()  # recorded once
    assert len(ledger.studies([State.QUARANTINED])) == 1
