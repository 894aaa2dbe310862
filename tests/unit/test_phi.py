"""The PHI check: identity from DICOM, findings in a heudiconv-like BIDS tree, date scrubbing.

Real files in tmp_path: DICOM instances from the synthetic scanner (PatientName
"Synthetic^Subject", PatientID "SUB01"), tar archives of a series, a tree laid
out as heudiconv + dcm2niix leave it, and one real git repository.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pydicom
import pytest

from bidsflux.convert.phi import (
    ALLOWANCES,
    Finding,
    Identity,
    check_tree,
    identity_from_archive,
    identity_from_dicom,
    parse_allow,
    read_commit_messages,
    require_clean,
    scrub_acquisition_dates,
)
from bidsflux.errors import PhiError, UsageError
from bidsflux.scanner import StudySpec, generate_study

NAME, PID, BIRTH, STUDY_DATE = "Synthetic^Subject", "SUB01", "19900615", "20240312"
NOTHING: frozenset[str] = frozenset()
SIDECAR = "sub-01/ses-01/anat/sub-01_ses-01_T1w.json"
SCANS = "sub-01/ses-01/sub-01_ses-01_scans.tsv"
DICOMINFO = ".heudiconv/01/ses-01/info/dicominfo_ses-01.tsv"
SEQINFO_FIELDS = ["total_files_till_now", "example_dcm_file", "series_id", "dcm_dir_name", "series_files",
                  "unspecified", "dim1", "dim2", "dim3", "dim4", "TR", "TE", "protocol_name",
                  "is_motion_corrected", "is_derived", "patient_id", "study_description",
                  "referring_physician_name", "series_description", "sequence_name", "image_type",
                  "accession_number", "patient_age", "patient_sex", "date", "series_uid", "time", "custom"]


@pytest.fixture(scope="module")
def instances() -> list[pydicom.Dataset]:
    return list(itertools.islice(generate_study(StudySpec()), 3))  # the scout series


@pytest.fixture(scope="module")
def identity(instances: list[pydicom.Dataset], tmp_path_factory: pytest.TempPathFactory) -> Identity:
    path = tmp_path_factory.mktemp("dicom") / "scout.dcm"
    pydicom.dcmwrite(path, instances[0], enforce_file_format=True)
    return identity_from_dicom(path)


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sidecar(**extra: object) -> str:
    """A dcm2niix-like sidecar, pretty-printed as heudiconv writes it."""
    fields: dict[str, object] = {
        "Modality": "MR", "MagneticFieldStrength": 3, "Manufacturer": "Siemens",
        "InstitutionName": "Synthetic Imaging Center", "InstitutionAddress": "1 Loopback Way",
        "DeviceSerialNumber": "166112", "SeriesDescription": "anat-T1w", "ProtocolName": "anat-T1w",
        "RepetitionTime": 2.3, "ConversionSoftware": "dcm2niix", "ConversionSoftwareVersion": "v1.0.20260724",
    }
    fields.update(extra)
    return json.dumps(fields, indent=2) + "\n"


def make_tree(root: Path, *, acq_time: str = "n/a", **sidecar_extra: object) -> Path:
    """A BIDS session as heudiconv + dcm2niix leave it, with no identifying data."""
    write(root, "dataset_description.json", json.dumps({"Name": "Doe Demo", "BIDSVersion": "1.8.0"}, indent=2))
    write(root, "README", "Acquired at the Synthetic Imaging Center.\nEach Subject gave consent.\n")
    write(root, "CHANGES", "0.1.0 2030-01-01\n  - converted\n")
    write(root, "participants.tsv", "participant_id\tage\tsex\tgroup\nsub-01\t033Y\tF\tcontrol\n")
    write(root, SCANS, "filename\tacq_time\toperator\trandstr\n"
          f"anat/sub-01_ses-01_T1w.nii.gz\t{acq_time}\tn/a\t3f2a9c1d\n"
          "func/sub-01_ses-01_task-rest_run-01_bold.nii.gz\tn/a\tn/a\t77b0e4aa\n")
    write(root, SIDECAR, sidecar(**sidecar_extra))
    write(root, ".heudiconv/01/ses-01/info/01_ses-01.auto.txt", "{('anat/sub-{subject}_{session}_T1w', "
          "('nii.gz',), None): ['2-anat-T1w']}\n")
    annexed = write(root, ".git/annex/objects/Xk/12/SHA256E-s1--ab.nii.gz/SHA256E-s1--ab.nii.gz", NAME)
    (root / SIDECAR.replace(".json", ".nii.gz")).symlink_to(annexed)
    write(root, ".git/COMMIT_EDITMSG", f"for {NAME}\n")
    write(root, ".datalad/config", f'[datalad "dataset"]\n\tid = {PID}\n')
    return root


def kinds(findings: list[Finding]) -> set[tuple[str, int | None, str]]:
    return {(f.path, f.line, f.what) for f in findings}


def line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().split("\n"), 1) if needle in line)


# --- identity ------------------------------------------------------------------------------------

def test_identity_from_dicom(identity: Identity) -> None:
    assert identity.patient_names == (NAME,)
    assert identity.patient_ids == (PID,)
    assert identity.birth_dates == (BIRTH,)
    assert identity.acquisition_dates == (STUDY_DATE,)
    assert len(identity.accession_numbers) == 1 and identity.accession_numbers[0].startswith("A")


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:gz", ".tgz")])
def test_identity_from_series_archive_matches_the_instance(
        instances: list[pydicom.Dataset], identity: Identity, tmp_path: Path, mode: str, suffix: str) -> None:
    series = tmp_path / "series"
    series.mkdir()
    for n, instance in enumerate(instances, 1):
        pydicom.dcmwrite(series / f"{n:05d}.dcm", instance, enforce_file_format=True)
    archive = tmp_path / f"01-anat-scout{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(series, arcname="01-anat-scout")  # a folder first: the first *regular* member counts
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    assert identity_from_archive(archive) == identity
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing extracted


def test_unreadable_sources_are_phi_errors(tmp_path: Path) -> None:
    text = write(tmp_path, "notes.dcm", "not a DICOM file\n")
    with pytest.raises(PhiError, match="not a DICOM instance"):
        identity_from_dicom(text)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(PhiError, match="holds no file") as caught:
        identity_from_archive(empty)
    assert caught.value.exit_code == 13
    with pytest.raises(PhiError, match="cannot read a DICOM header from the archive"):
        identity_from_archive(text)


# --- the tree ------------------------------------------------------------------------------------

def test_clean_tree_has_no_findings(identity: Identity, tmp_path: Path) -> None:
    assert check_tree(make_tree(tmp_path), identity, NOTHING) == []


def test_patient_name_key_is_found_without_printing_the_name(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path, PatientName=NAME)
    line = line_of(root / SIDECAR, '"PatientName"')

    findings = check_tree(root, identity, frozenset(ALLOWANCES))

    assert kinds(findings) == {(SIDECAR, line, "key PatientName"), (SIDECAR, line, "PatientName value")}
    assert f"{SIDECAR}:{line}: key PatientName" in [str(finding) for finding in findings]
    for finding in findings:
        assert "synthetic" not in str(finding).lower() and "subject" not in str(finding).lower()


def test_identifying_keys_count_whatever_their_value_and_depth(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path, PatientBirthDate="", dcmmeta={"global": {"AccessionNumber": "X"}})
    findings = check_tree(root, identity, frozenset(ALLOWANCES))
    assert kinds(findings) == {
        (SIDECAR, line_of(root / SIDECAR, "PatientBirthDate"), "key PatientBirthDate"),
        (SIDECAR, line_of(root / SIDECAR, "AccessionNumber"), "key AccessionNumber"),
    }


@pytest.mark.parametrize("rendering", ["Synthetic^Subject", "Subject Synthetic", "Synthetic Subject",
                                       "Synthetic, Subject", "SYNTHETIC_subject", "subject  synthetic"])
def test_patient_name_renderings_in_values(identity: Identity, tmp_path: Path, rendering: str) -> None:
    root = make_tree(tmp_path, SeriesDescription=f"T1w of {rendering} (repeat)")
    findings = check_tree(root, identity, NOTHING)
    assert kinds(findings) == {(SIDECAR, line_of(root / SIDECAR, "SeriesDescription"), "PatientName value")}


@pytest.mark.parametrize("text", ["Synthetic Imaging Center", "Subject 01", "Synthetic", "Synthetics Subject",
                                  "Synthetic-Subjects"])
def test_one_part_of_a_two_part_name_does_not_match(identity: Identity, tmp_path: Path, text: str) -> None:
    root = make_tree(tmp_path, InstitutionalDepartmentName=text)
    assert check_tree(root, identity, NOTHING) == []


def test_name_written_with_json_escapes_is_found(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write(root, SIDECAR, '{\n  "SeriesDescription": "Synthetic\\u005eSubject"\n}\n')
    assert kinds(check_tree(root, identity, NOTHING)) == {(SIDECAR, None, "PatientName value")}


def test_heudiconv_dicominfo_is_read(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    row = {field: "n/a" for field in SEQINFO_FIELDS}
    row.update(patient_id=PID, study_description=f"Doe^Demo {NAME}", referring_physician_name="Doe^Jane",
               accession_number=identity.accession_numbers[0], date=STUDY_DATE, time="101500.000000")
    write(root, DICOMINFO, "\t".join(SEQINFO_FIELDS) + "\n" + "\t".join(row.values()) + "\n")

    everything_allowed = kinds(check_tree(root, identity, frozenset(ALLOWANCES)))
    assert everything_allowed == {
        (DICOMINFO, 1, "column referring_physician_name"), (DICOMINFO, 1, "column accession_number"),
        (DICOMINFO, 2, "PatientName value"), (DICOMINFO, 2, "AccessionNumber value"),
    }
    nothing_allowed = kinds(check_tree(root, identity, NOTHING))
    assert nothing_allowed - everything_allowed == {
        (DICOMINFO, 1, "column patient_id"), (DICOMINFO, 2, "PatientID value"),
        (DICOMINFO, 2, "acquisition date"), (DICOMINFO, 2, "acquisition time"),
    }


def test_commit_messages(identity: Identity, tmp_path: Path) -> None:
    messages = {"0123456789abcdef": "convert session 01\n\nsourcedata/dicoms: 89ab\n",
                "fedcba9876543210": f"convert session 01\n\nscanned {BIRTH[:4]}-{BIRTH[4:6]}-{BIRTH[6:]}, "
                                    "Subject, Synthetic\n"}
    findings = check_tree(make_tree(tmp_path), identity, NOTHING, commit_messages=messages)
    assert [str(f) for f in findings] == ["commit fedcba98:3: PatientName value", "commit fedcba98:3: birth date"]


def test_commit_messages_read_from_git(identity: Identity, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "base"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", f"convert\n\npatient {PID}"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()

    messages = read_commit_messages(repo, "HEAD~1..HEAD")

    assert list(messages) == [head]
    with pytest.raises(PhiError, match="there is no dataset at"):
        check_tree(tmp_path / "missing", identity, NOTHING)
    findings = check_tree(repo, identity, NOTHING, commit_messages=messages)
    assert [str(f) for f in findings] == [f"commit {head[:8]}:3: PatientID value"]


def test_patient_id_as_subject_label_unless_allowed(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path, PatientID=PID)
    write(root, "participants.tsv", "participant_id\tpatient_id\tage\nsub-sub01\tSUB01\t033Y\n")
    key_line = line_of(root / SIDECAR, '"PatientID"')

    assert kinds(check_tree(root, identity, NOTHING)) == {
        ("participants.tsv", 1, "column patient_id"), ("participants.tsv", 2, "PatientID value"),
        (SIDECAR, key_line, "key PatientID"), (SIDECAR, key_line, "PatientID value"),
    }
    assert check_tree(root, identity, parse_allow("patient-id")) == []


def test_short_patient_ids_are_not_matched(tmp_path: Path) -> None:
    short = Identity(patient_names=(), patient_ids=("AB",), birth_dates=(), acquisition_dates=())
    root = make_tree(tmp_path, SeriesDescription="AB test")
    assert check_tree(root, short, NOTHING) == []


def test_birth_dates_are_always_findings(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write(root, "README", f"Born {BIRTH}.\n")
    write(root, "phenotype/notes.tsv", "participant_id\tnote\nsub-01\tdob 1990-06-15\n")
    assert kinds(check_tree(root, identity, frozenset(ALLOWANCES))) == {
        ("README", 1, "birth date"), ("phenotype/notes.tsv", 2, "birth date")}


def test_dates_inside_longer_numbers_are_not_matched(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path, ImageComments=f"ref 9{STUDY_DATE} and {BIRTH}7")
    assert check_tree(root, identity, NOTHING) == []
    write(root, SIDECAR, sidecar(ImageComments=f"ref 9-{STUDY_DATE}"))
    assert [f.what for f in check_tree(root, identity, NOTHING)] == ["acquisition date"]


def test_acquisition_dates_and_times_in_scans_tsv(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path, acq_time="2024-03-12T10:15:03.500000")
    found = {allow: kinds(check_tree(root, identity, parse_allow(allow)))
             for allow in ("", "acquisition-date", "acquisition-time", "acquisition-date,acquisition-time")}
    assert found == {
        "": {(SCANS, 2, "acquisition date"), (SCANS, 2, "acquisition time")},
        "acquisition-date": {(SCANS, 2, "acquisition time")},
        "acquisition-time": {(SCANS, 2, "acquisition date")},
        "acquisition-date,acquisition-time": set(),
    }


def test_scrub_shifts_the_dates_and_keeps_the_times(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path, acq_time="2024-03-12T10:15:03.500000")
    os.chmod(root / SCANS, 0o640)

    assert scrub_acquisition_dates(root) == [SCANS]

    assert (root / SCANS).read_text().splitlines()[1:] == [
        "anat/sub-01_ses-01_T1w.nii.gz\t1925-01-01T10:15:03.500000\tn/a\t3f2a9c1d",
        "func/sub-01_ses-01_task-rest_run-01_bold.nii.gz\tn/a\tn/a\t77b0e4aa",
    ]
    assert (root / SCANS).stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in (root / SCANS).parent.iterdir()) == ["anat", SCANS.rsplit("/", 1)[1]]
    assert kinds(check_tree(root, identity, NOTHING)) == {(SCANS, 2, "acquisition time")}
    assert check_tree(root, identity, parse_allow("acquisition-time")) == []
    assert scrub_acquisition_dates(root) == []


def test_scrub_leaves_annexed_scans_alone(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ds")
    target = write(tmp_path, "annexed_scans.tsv", "filename\tacq_time\nx.nii.gz\t2024-03-12T10:00:00\n")
    (root / SCANS).unlink()
    (root / SCANS).symlink_to(target)
    assert scrub_acquisition_dates(root) == []
    assert "2024-03-12" in target.read_text()


def test_acquisition_time_keys_in_sidecars(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path, AcquisitionTime="10:15:03.500000")
    line = line_of(root / SIDECAR, "AcquisitionTime")
    assert kinds(check_tree(root, identity, NOTHING)) == {(SIDECAR, line, "key AcquisitionTime")}
    assert check_tree(root, identity, parse_allow("acquisition-time")) == []


def test_annexed_files_subdatasets_and_git_are_not_read(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    planted = f"{NAME} {PID} {BIRTH}\n"
    outside = write(tmp_path.parent / f"{tmp_path.name}-annex", "key", planted)
    (root / "sub-01/ses-01/anat/sub-01_ses-01_T1w_annexed.json").symlink_to(outside)
    (root / "sourcedata/dicoms").mkdir(parents=True)
    write(root, "sourcedata/dicoms/.git", "gitdir: ../../.git/modules/dicoms\n")
    write(root, "sourcedata/dicoms/README", planted)
    write(root, "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz.bin", "\0" + planted)
    assert check_tree(root, identity, NOTHING) == []

    write(root, "sourcedata/README", planted)  # the superdataset's own file is read
    assert {f.path for f in check_tree(root, identity, NOTHING)} == {"sourcedata/README"}


def test_dicom_archives_in_the_dataset_are_findings_by_name_unless_allowed(identity: Identity,
                                                                           tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    archive = "sourcedata/sub-01/ses-01/anat/sub-01_ses-01_T1w.dicom.tgz"
    key = write(root, ".git/annex/objects/Qq/9z/SHA256E-s9--cd.tgz/SHA256E-s9--cd.tgz", "not read")
    (root / archive).parent.mkdir(parents=True)
    (root / archive).symlink_to(key)  # annexed: found by its name, its content is never read
    write(root, "extra/IM0001.dcm", "DICM")
    (root / "sourcedata/dicoms").mkdir(parents=True)
    write(root, "sourcedata/dicoms/.git", "gitdir: ../../.git/modules/dicoms\n")
    write(root, "sourcedata/dicoms/sub-01.tar", "the subdataset's own archives are not this dataset's files")

    found = kinds(check_tree(root, identity, NOTHING))
    what = "DICOM data with every header (patient name, birth date...)"
    assert found == {(archive, None, what), ("extra/IM0001.dcm", None, what)}
    assert check_tree(root, identity, frozenset({"dicom-archives"})) == []


def test_findings_are_sorted_and_deterministic(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path, acq_time="2024-03-12T10:15:03", PatientName=NAME)
    write(root, "README", f"\n{NAME}\n")
    first = check_tree(root, identity, NOTHING)
    assert first == check_tree(root, identity, NOTHING)
    assert [(f.path, f.line) for f in first] == sorted((f.path, f.line or 0) for f in first)
    assert [f.path for f in first] == ["README", SIDECAR, SIDECAR, SCANS, SCANS]


def test_require_clean_reports_places_not_values(identity: Identity, tmp_path: Path) -> None:
    root = make_tree(tmp_path, PatientName=NAME, PatientID=PID)
    findings = check_tree(root, identity, NOTHING)
    require_clean([])
    with pytest.raises(PhiError) as caught:
        require_clean(findings, study="1.2.3", shown=2)
    message = str(caught.value)
    assert message.startswith("study 1.2.3: 4 place(s) with identifying data")
    assert f"{SIDECAR}:" in message and "and 2 more" in message
    assert "Synthetic" not in message and PID not in message and caught.value.exit_code == 13


# --- policy --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("", set()), ("  ", set()), ("patient-id", {"patient-id"}),
    ("Patient-ID, acquisition-date", {"patient-id", "acquisition-date"}),
    ("acquisition-date acquisition-time,patient-id dicom-archives", set(ALLOWANCES)),
])
def test_parse_allow(text: str, expected: set[str]) -> None:
    assert parse_allow(text) == frozenset(expected)


def test_parse_allow_names_the_unknown_word_and_the_choices() -> None:
    with pytest.raises(UsageError) as caught:
        parse_allow("patient-id, patient-name")
    message = str(caught.value)
    assert "'patient-name'" in message and caught.value.exit_code == 2
    assert all(word in message for word in ALLOWANCES)


def test_check_tree_refuses_unknown_allowances(identity: Identity, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="'birth-date'"):
        check_tree(tmp_path, identity, frozenset({"birth-date"}))
