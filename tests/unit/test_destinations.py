"""dicom-send without a network: destination settings, choosing destinations, finding DICOM, making an SR."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import BasicTextSRStorage, ImplicitVRLittleEndian

from bidsflux._settings_destinations import Destination, DestinationSettings
from bidsflux.destinations import SendReport, find_dicom, make_sr, resolve, send
from bidsflux.errors import SendError, UsageError
from bidsflux.scanner import StudySpec, generate_study

PACS = Destination("pacs", "ORTHANC", "10.0.0.5", 4242)
VIEWER = Destination("viewer", "VIEW", "pacs.example.org", 104)


def parse(env: str, raw: str) -> Any:
    """Parse ``raw`` as the settings loader does: with the parser of the field read from ``env``."""
    [found] = [f for f in dataclasses.fields(DestinationSettings) if f.metadata["env"] == env]
    return found.metadata["parse"](raw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MR instance of the synthetic study, written as a scanner would."""
    ds = next(iter(generate_study(StudySpec(seed=3))))
    path = tmp_path_factory.mktemp("reference") / "mr.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


# -- settings -------------------------------------------------------------------

def test_defaults() -> None:
    settings = DestinationSettings()
    assert settings.dicom_destinations == {}
    assert (settings.dicom_send_aet, settings.dicom_send_timeout, settings.sender_port) == ("BIDSFLUX", 30.0, None)
    assert [f.metadata["env"] for f in dataclasses.fields(DestinationSettings)] == [
        "BIDSFLUX_DICOM_DESTINATIONS", "BIDSFLUX_DICOM_SEND_AET", "BIDSFLUX_DICOM_SEND_TIMEOUT",
        "BIDSFLUX_SENDER_PORT"]


@pytest.mark.parametrize("raw", [
    "pacs=ORTHANC@10.0.0.5:4242;viewer=VIEW@pacs.example.org:104",
    " pacs = ORTHANC@10.0.0.5:4242 , viewer=VIEW@pacs.example.org:104 ;",
])
def test_destinations_parse(raw: str) -> None:
    assert parse("BIDSFLUX_DICOM_DESTINATIONS", raw) == {"pacs": PACS, "viewer": VIEWER}


def test_destination_edge_forms() -> None:
    found = parse("BIDSFLUX_DICOM_DESTINATIONS", "a_1-b=MY@AE@[::1]:11112,b=X@localhost:1")
    assert found["a_1-b"] == Destination("a_1-b", "MY@AE", "::1", 11112)  # the last '@' splits AE from host
    assert str(found["a_1-b"]) == "a_1-b (MY@AE@[::1]:11112)"
    assert found["b"].port == 1
    assert parse("BIDSFLUX_DICOM_DESTINATIONS", "") == {}


@pytest.mark.parametrize(("item", "reason"), [
    ("pacs", "NAME=AET@HOST:PORT"),
    ("Pacs=ORTHANC@h:104", "NAME"),
    ("-pacs=ORTHANC@h:104", "NAME"),
    ("pacs=ORTHANC", "NAME=AET@HOST:PORT"),
    ("pacs=ORTHANC@h", "NAME=AET@HOST:PORT"),
    ("pacs=ORTHANC@h:0", "between 1 and 65535"),
    ("pacs=ORTHANC@h:65536", "between 1 and 65535"),
    ("pacs=ORTHANC@h:ab", "between 1 and 65535"),
    ("pacs=@h:104", "AE title"),
    ("pacs=SEVENTEEN_CHARS_X@h:104", "AE title"),
    ("pacs=OR\\THANC@h:104", "AE title"),
    ("pacs=OR\tHANC@h:104", "AE title"),
    ("pacs=ORTHANC@bad host:104", "not a host name"),
    ("pacs=ORTHANC@:104", "not a host name"),
    ("pacs=ORTHANC@$(reboot):104", "not a host name"),
    ("sender=MODALITY@h:104", "reserved"),
])
def test_bad_destination_names_the_item(item: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse("BIDSFLUX_DICOM_DESTINATIONS", f"good=A@h:1;{item}")
    assert repr(item) in str(caught.value) and reason in str(caught.value)


def test_a_name_given_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="given twice"):
        parse("BIDSFLUX_DICOM_DESTINATIONS", "pacs=A@h:1;pacs=B@h:2")


def test_scalar_settings_parse_and_refuse() -> None:
    assert parse("BIDSFLUX_DICOM_SEND_AET", "RESULTS") == "RESULTS"
    assert parse("BIDSFLUX_DICOM_SEND_TIMEOUT", "2.5") == 2.5
    assert parse("BIDSFLUX_SENDER_PORT", "104") == 104
    for env, raw in [("BIDSFLUX_DICOM_SEND_AET", "A\\B"), ("BIDSFLUX_DICOM_SEND_AET", "X" * 17),
                     ("BIDSFLUX_DICOM_SEND_TIMEOUT", "0"), ("BIDSFLUX_SENDER_PORT", "0"),
                     ("BIDSFLUX_SENDER_PORT", "70000")]:
        with pytest.raises(ValueError):
            parse(env, raw)


# -- resolve ----------------------------------------------------------------------

SETTINGS = DestinationSettings(dicom_destinations={"pacs": PACS, "viewer": VIEWER}, sender_port=11112)


def test_resolve_keeps_order_and_drops_repeats() -> None:
    assert resolve(SETTINGS, ["viewer", "pacs", "viewer"], sender=None) == [VIEWER, PACS]


def test_resolve_sender_uses_the_ledger_record_and_the_port_setting() -> None:
    [found] = resolve(SETTINGS, ["sender"], sender=("MODALITY", "10.1.2.3"))
    assert found == Destination("sender", "MODALITY", "10.1.2.3", 11112)
    [found] = resolve(SETTINGS, ["sender"], sender=("MODALITY", "::1"))
    assert found.host == "::1"


def test_unknown_destination_lists_the_configured_ones() -> None:
    with pytest.raises(UsageError) as caught:
        resolve(SETTINGS, ["pacs", "archive"], sender=None)
    assert "'archive'" in str(caught.value)
    assert "pacs, viewer, sender" in str(caught.value)


def test_sender_needs_a_port_and_a_known_sender() -> None:
    with pytest.raises(UsageError, match="BIDSFLUX_SENDER_PORT"):
        resolve(dataclasses.replace(SETTINGS, sender_port=None), ["sender"], sender=("MODALITY", "10.1.2.3"))
    with pytest.raises(UsageError, match="sender is not known"):
        resolve(SETTINGS, ["sender"], sender=None)


@pytest.mark.parametrize("sender", [("MOD\\ALITY", "10.1.2.3"), ("MOD\nALITY", "10.1.2.3"), ("", "10.1.2.3"),
                                    ("MODALITY", "10.1.2.3; rm -rf /"), ("MODALITY", "")])
def test_a_hostile_sender_record_is_refused(sender: tuple[str, str]) -> None:
    with pytest.raises(UsageError, match="cannot return results to the sender"):
        resolve(SETTINGS, ["sender"], sender=sender)


# -- find_dicom ---------------------------------------------------------------------

def test_find_dicom(tmp_path: Path, reference: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "derivative"
    (root / "sub-01" / ".git").mkdir(parents=True)
    (root / ".git" / "annex" / "objects").mkdir(parents=True)
    shutil.copyfile(reference, root / "sub-01" / "MR.1.2.3")  # DICM preamble, no suffix
    (root / "sub-01" / "report.DCM").write_bytes(b"named like DICOM")
    (root / "sub-01" / "stats.tsv").write_text("name\tmean\n")
    (root / "short").write_bytes(b"DICM")
    shutil.copyfile(reference, root / "sub-01" / ".git" / "in-git.dcm")
    shutil.copyfile(reference, root / ".git" / "annex" / "objects" / "KEY")
    (root / "seg.dcm").symlink_to(Path(".git/annex/objects/KEY"))  # annexed, content present
    (root / "absent.dcm").symlink_to(Path(".git/annex/objects/MISSING"))  # annexed, content not here
    (root / "linked-folder").symlink_to(root / "sub-01", target_is_directory=True)

    with caplog.at_level(logging.WARNING, logger="bidsflux.destinations"):
        found = find_dicom(root)

    assert found == [root / "seg.dcm", root / "sub-01" / "MR.1.2.3", root / "sub-01" / "report.DCM"]
    assert [r.getMessage() for r in caplog.records if "skipped 1 file" in r.getMessage()]


# -- make_sr --------------------------------------------------------------------------

STATS = [{"image": "T1w", "mean": "412.3", "std": "80.1"}, {"image": "bold", "tsnr": "61.2"}, {"outliers": "0"}]
TEXTS = ["T1w: mean 412.3, std 80.1", "bold: tsnr 61.2", "outliers: 0"]


def test_make_sr_belongs_to_the_reference_study(reference: Path, tmp_path: Path) -> None:
    out = make_sr(STATS, reference, tmp_path / "qc" / "sr.dcm", title="MRIQC summary")
    source, sr = pydicom.dcmread(reference), pydicom.dcmread(out)

    assert out == tmp_path / "qc" / "sr.dcm" and [p.name for p in out.parent.iterdir()] == ["sr.dcm"]
    assert sr.SOPClassUID == sr.file_meta.MediaStorageSOPClassUID == BasicTextSRStorage
    assert sr.SOPInstanceUID == sr.file_meta.MediaStorageSOPInstanceUID
    for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate", "StudyDate",
                    "AccessionNumber", "ReferringPhysicianName"):
        assert sr[keyword].value == source[keyword].value, keyword
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID and sr.SOPInstanceUID != source.SOPInstanceUID
    assert sr.SeriesInstanceUID.is_valid and sr.SOPInstanceUID.is_valid
    assert sr.Modality == "SR" and sr.ConceptNameCodeSequence[0].CodeMeaning == "MRIQC summary"
    assert [(i.ValueType, i.RelationshipType, i.TextValue) for i in sr.ContentSequence] == [
        ("TEXT", "CONTAINS", text) for text in TEXTS]
    [evidence] = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        source.SOPInstanceUID


def test_make_sr_keeps_non_ascii_names(reference: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(reference)
    source.SpecificCharacterSet, source.PatientName = "ISO_IR 100", "Müller^Jürgen"
    latin1 = tmp_path / "latin1.dcm"
    source.save_as(latin1)
    sr = pydicom.dcmread(make_sr(STATS[:1], latin1, tmp_path / "sr.dcm", title="QC"))
    assert str(sr.PatientName) == "Müller^Jürgen"


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk dsrdump is not installed")
def test_make_sr_is_a_valid_sr_for_dcmtk(reference: Path, tmp_path: Path) -> None:
    out = make_sr(STATS, reference, tmp_path / "sr.dcm", title="MRIQC summary")
    done = subprocess.run([shutil.which("dsrdump") or "dsrdump", str(out)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "E:" not in done.stderr, done.stderr
    assert "Basic Text SR Document" in done.stdout
    for text in TEXTS:
        assert f'<contains TEXT:(,,"Finding")="{text}">' in done.stdout


@pytest.mark.parametrize("title", ["", "x" * 65, "a\\b", "line\nbreak"])
def test_make_sr_refuses_a_bad_title(reference: Path, tmp_path: Path, title: str) -> None:
    with pytest.raises(ValueError, match="title"):
        make_sr(STATS, reference, tmp_path / "sr.dcm", title=title)
    assert not list(tmp_path.iterdir())


# -- send without a peer ----------------------------------------------------------------

def test_unsendable_files_fail_without_contacting_anyone(tmp_path: Path, reference: Path) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("not DICOM")
    no_meta = tmp_path / "no-uids.dcm"
    ds = pydicom.dcmread(reference)
    del ds.SOPInstanceUID
    ds.save_as(no_meta)
    nowhere = Destination("pacs", "PACS", "192.0.2.1", 104)  # TEST-NET-1: unreachable, so contact would raise
    report = send([text, no_meta], nowhere, calling_aet="BIDSFLUX", timeout=1, study=None)
    assert (report.sent, report.failed) == (0, 2)
    assert report.files == [str(text), str(no_meta)]
    assert "not readable" in report.failures[str(text)]
    assert "SOP Instance" in report.failures[str(no_meta)]
    assert report.summary() == "pacs (PACS@192.0.2.1:104): sent 0, failed 2 of 2 files"


def test_a_bad_calling_aet_is_a_send_error(reference: Path) -> None:
    with pytest.raises(SendError, match="calling AE title"):
        send([reference], PACS, calling_aet="BIDS\\FLUX", timeout=1, study="1.2.3")


def test_report_summary_counts() -> None:
    report = SendReport(destination=str(PACS), sent=2, failed=1, files=["a", "b", "c"], failures={"c": "x"})
    assert report.summary() == "pacs (ORTHANC@10.0.0.5:4242): sent 2, failed 1 of 3 files"


def test_implicit_vr_is_kept_for_sending(reference: Path, tmp_path: Path) -> None:
    """The presentation context follows the file: an implicit VR file is proposed as implicit VR."""
    from bidsflux.destinations import _context_of

    ds = pydicom.dcmread(reference)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = tmp_path / "implicit.dcm"
    ds.save_as(implicit, implicit_vr=True, little_endian=True)
    assert _context_of(implicit) == (ds.SOPClassUID, ImplicitVRLittleEndian)
    assert _context_of(reference)[1] == pydicom.dcmread(reference).file_meta.TransferSyntaxUID
