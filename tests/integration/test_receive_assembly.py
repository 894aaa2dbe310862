"""Studies assembled right: many senders at once, studies interleaved on one association, one study
over several associations; every batch complete and separate."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from bidsflux.assemble import AssembleOptions, Assembler
from bidsflux.ledger import Ledger, State
from bidsflux.receive import Batch, Endpoint, EndpointOptions, Spool

from .test_receive_client import small_dataset

DCMTK_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}


def write_study(folder: Path, study: str, *, series: int = 3, instances: int = 4) -> dict[str, set[str]]:
    """A small study as Part 10 files; returns series UID -> SOP Instance UIDs."""
    made: dict[str, set[str]] = {}
    for s in range(1, series + 1):
        series_uid = f"{study}.{s}"
        for i in range(1, instances + 1):
            ds = small_dataset(study, series_uid, f"{series_uid}.{i}", SeriesDescription=f"series-{s}")
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f"{series_uid}.{i}.dcm", enforce_file_format=True)
            made.setdefault(series_uid, set()).add(ds.SOPInstanceUID)
    return made


def storescu(port: int, files: list[Path], aet: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["/usr/bin/storescu", "-aet", aet, "-aec", "BIDSFLUX", "127.0.0.1", str(port),
                             *map(str, files)], env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.fixture
def receiver(tmp_path: Path):
    spool = Spool(tmp_path / "spool", journal_segment_bytes=1 << 22, journal_spare=2)
    endpoint = Endpoint(spool, aet="BIDSFLUX", host="127.0.0.1", port=0, options=EndpointOptions(min_free_bytes=0))
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assembler = Assembler(spool, endpoint.state, ledger, 30,
                          options=AssembleOptions(association_end_quiet=3.0, force_after=3600))
    yield endpoint, assembler, ledger
    endpoint.stop(grace=2)
    ledger.close()


def assemble(assembler: Assembler, count: int, timeout: float = 60) -> list[Batch]:
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    while len(batches) < count and time.monotonic() < deadline:
        batches += assembler.tick()
        time.sleep(0.1)
    return batches


def contents(batch: Batch) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in batch.path.glob("*/*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == batch.study_uid and path.parent.name == ds.SeriesInstanceUID
        found.setdefault(path.parent.name, set()).add(path.name[:-4])
    return found


def test_eight_senders_four_interleaved_studies_each(receiver, tmp_path: Path) -> None:
    endpoint, assembler, ledger = receiver
    rng = random.Random(8)
    expected: dict[str, dict[str, set[str]]] = {}
    senders = []
    for sender in range(8):
        files: list[Path] = []
        for n in range(4):
            study = f"1.2.826.0.1.77.{sender}.{n}"
            expected[study] = write_study(tmp_path / "studies" / study, study)
            files += sorted((tmp_path / "studies" / study).iterdir())
        rng.shuffle(files)  # the four studies interleaved on one association
        senders.append(storescu(endpoint.port, files, f"SCANNER{sender}"))
    for process in senders:
        output = process.communicate(timeout=120)[0]
        assert process.returncode == 0, output
    batches = assemble(assembler, 32)
    assert sorted(b.study_uid for b in batches) == sorted(expected)
    for batch in batches:
        assert contents(batch) == expected[batch.study_uid]
        record = ledger.require(batch.study_uid)
        assert record.state is State.COMPLETE and record.instances == 12 and record.series == 3
        assert record.completion_reason == "association ended 3s ago"
        assert record.calling_aet == f"SCANNER{batch.study_uid.split('.')[-2]}"


def test_one_study_over_several_associations_is_one_batch(receiver, tmp_path: Path) -> None:
    endpoint, assembler, ledger = receiver
    study = "1.2.826.0.1.78"
    expected = write_study(tmp_path / "study", study, series=4)
    files = sorted((tmp_path / "study").iterdir())
    by_series = [[f for f in files if f.name.startswith(f"{study}.{s}.")] for s in range(1, 5)]
    first = storescu(endpoint.port, by_series[0], "SCANNER")
    assert first.wait(timeout=60) == 0
    assert assembler.tick() == []
    # two more at the same time, then a last one before the association-end hint is due
    parallel = [storescu(endpoint.port, by_series[1], "SCANNER"), storescu(endpoint.port, by_series[2], "SCANNER")]
    assert [p.wait(timeout=60) for p in parallel] == [0, 0]
    assert assembler.tick() == []
    assert storescu(endpoint.port, by_series[3], "SCANNER").wait(timeout=60) == 0
    [batch] = assemble(assembler, 1)
    assert contents(batch) == expected
    assert len(ledger.require(study).details["associations"]) == 4
