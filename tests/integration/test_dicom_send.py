"""dicom-send against real Storage SCPs on loopback: dcmtk's storescp as the PACS, pynetdicom for AE checks."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset

from bidsflux import _datalad
from bidsflux._settings_destinations import Destination, DestinationSettings
from bidsflux.destinations import find_dicom, make_sr, resolve, send
from bidsflux.errors import SendError
from bidsflux.scanner import StudySpec, write_study

from ..conftest import free_port, wait_for_port

STORESCP = "/usr/bin/storescp"
pytestmark = pytest.mark.skipif(not os.access(STORESCP, os.X_OK), reason="dcmtk storescp is not installed")


@contextmanager
def _storescp(folder: Path, *options: str) -> Iterator[tuple[int, Path]]:
    folder.mkdir()
    port = free_port()
    # +B: written exactly as received; +xa/-pm: any transfer syntax and SOP class, so nothing is converted
    process = subprocess.Popen([STORESCP, "-aet", "PACS", "+B", "-pm", "-od", str(folder), *options, str(port)],
                               env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        yield port, folder
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with _storescp(tmp_path / "pacs", "+xa") as running:
        yield running


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two MR instances from each of two series of the synthetic study."""
    paths = write_study(StudySpec(seed=5), tmp_path_factory.mktemp("study"))
    scout = [p for p in paths if p.parent.name.startswith("01-")]
    t1w = [p for p in paths if p.parent.name.startswith("02-")]
    return scout[:2] + t1w[:2]


def _dataset_bytes(path: Path) -> bytes:
    """The data set as encoded in the file, without the preamble and file meta."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def _received(folder: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir()}


def test_sr_and_mr_arrive_unchanged(pacs: tuple[int, Path], study: list[Path], tmp_path: Path) -> None:
    port, folder = pacs
    sr = make_sr([{"image": "T1w", "mean": "412.3"}], study[0], tmp_path / "out" / "qc.dcm", title="QC")
    rle = Path(get_testdata_file("MR_small_RLE.dcm"))  # compressed: must travel as it is, not decoded
    files = [sr, *study, rle]

    report = send(files, Destination("pacs", "PACS", "127.0.0.1", port), calling_aet="BIDSFLUX", timeout=30,
                  study=str(pydicom.dcmread(sr).StudyInstanceUID))

    assert (report.sent, report.failed, report.failures) == (len(files), 0, {})
    received = _received(folder)
    assert set(received) == {str(pydicom.dcmread(p).SOPInstanceUID) for p in files}
    for path in files:
        source = pydicom.dcmread(path)
        arrived = received[str(source.SOPInstanceUID)]
        assert _dataset_bytes(arrived) == _dataset_bytes(path), path.name
        copy = pydicom.dcmread(arrived)
        assert copy.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert copy == source
        if "PixelData" in source:
            assert copy.PixelData == source.PixelData
    assert pydicom.dcmread(received[str(pydicom.dcmread(sr).SOPInstanceUID)]).SOPClassUID == BasicTextSRStorage


def test_return_to_sender(pacs: tuple[int, Path], study: list[Path]) -> None:
    port, folder = pacs
    settings = DestinationSettings(sender_port=port)
    [destination] = resolve(settings, ["sender"], sender=("PACS", "127.0.0.1"))
    report = send(study[:1], destination, calling_aet="BIDSFLUX", timeout=30, study=None)
    assert report.sent == 1 and set(_received(folder)) == {str(pydicom.dcmread(study[0]).SOPInstanceUID)}


def test_a_closed_port_is_a_transient_error(study: list[Path]) -> None:
    port = free_port()
    with pytest.raises(SendError) as caught:
        send(study, Destination("pacs", "PACS", "127.0.0.1", port), calling_aet="BIDSFLUX", timeout=10,
             study="1.2.3")
    assert caught.value.transient is True
    assert f"pacs (PACS@127.0.0.1:{port})" in str(caught.value)
    assert "cannot reach" in str(caught.value)


def test_a_refused_association_is_a_permanent_error(tmp_path: Path, study: list[Path]) -> None:
    with _storescp(tmp_path / "refusing", "+xa", "--refuse") as (port, _):
        for attempt in range(3):  # a prompt rejection must never read as an abort
            with pytest.raises(SendError) as caught:
                send(study, Destination("pacs", "PACS", "127.0.0.1", port), calling_aet="BIDSFLUX", timeout=10,
                     study=None)
            assert caught.value.transient is False, attempt
            assert f"pacs (PACS@127.0.0.1:{port}) rejected the association from 'BIDSFLUX'" in str(caught.value)


def test_a_wrong_called_ae_title_is_named(study: list[Path]) -> None:
    scp = AE(ae_title="PACS")
    scp.require_called_aet = True
    scp.add_supported_context(pydicom.dcmread(study[0]).SOPClassUID, ExplicitVRLittleEndian)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        port = server.server_address[1]
        with pytest.raises(SendError) as caught:
            send(study, Destination("archive", "ARCHIVE", "127.0.0.1", port), calling_aet="BIDSFLUX",
                 timeout=10, study=None)
    finally:
        server.shutdown()
    assert caught.value.transient is False
    assert f"archive (ARCHIVE@127.0.0.1:{port}) rejected" in str(caught.value)
    assert "Called AE" in str(caught.value) and "'ARCHIVE'" in str(caught.value)


def test_files_are_not_converted_to_what_the_destination_accepts(tmp_path: Path, study: list[Path]) -> None:
    ds = pydicom.dcmread(study[0])
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = tmp_path / "implicit.dcm"
    ds.save_as(implicit, implicit_vr=True, little_endian=True)
    with _storescp(tmp_path / "implicit-only", "+xi") as (port, folder):
        destination = Destination("old", "PACS", "127.0.0.1", port)
        report = send([implicit, study[1]], destination, calling_aet="BIDSFLUX", timeout=10, study=None)
        assert (report.sent, report.failed) == (1, 1)
        assert "Explicit VR Little Endian" in report.failures[str(study[1])]
        assert set(_received(folder)) == {str(ds.SOPInstanceUID)}

        nothing = send(study[1:], destination, calling_aet="BIDSFLUX", timeout=10, study=None)
        assert (nothing.sent, nothing.failed) == (0, 3)  # accepted, but none of its contexts: per-file failures


def test_a_dropped_association_is_a_transient_error(tmp_path: Path, study: list[Path]) -> None:
    with _storescp(tmp_path / "aborting", "+xa", "--abort-after") as (port, _):
        with pytest.raises(SendError) as caught:
            send(study, Destination("pacs", "PACS", "127.0.0.1", port), calling_aet="BIDSFLUX", timeout=10,
                 study=None)
        assert caught.value.transient is True
        assert "dropped the association at file 1 of 4" in str(caught.value)


def test_find_dicom_gets_annexed_content_on_request(tmp_path: Path, study: list[Path]) -> None:
    origin = tmp_path / "origin"
    _datalad.ensure_dataset(origin, description="derivative", gitattributes="* annex.largefiles=anything\n",
                            study=None)
    (origin / "dicom").mkdir()
    shutil.copyfile(study[0], origin / "dicom" / "MR.1")  # no .dcm name: only its content says DICOM
    _datalad.save(origin, "results", study=None)
    clone = tmp_path / "clone"
    _datalad.clone(str(origin), clone, study=None)
    assert (clone / "dicom" / "MR.1").is_symlink() and not (clone / "dicom" / "MR.1").exists()

    assert find_dicom(clone) == []
    assert find_dicom(clone, get=True) == [clone / "dicom" / "MR.1"]
    assert (clone / "dicom" / "MR.1").read_bytes() == study[0].read_bytes()
