"""The PHI check of a converted BIDS dataset (the ``phi-check`` CI job).

heudiconv and dcm2niix copy some DICOM header values into the BIDS tree: the
sidecars, ``*_scans.tsv``, heudiconv's own ``.heudiconv/`` notes (whose
``dicominfo*.tsv`` has the patient ID, referring physician and accession
number), and whatever a person writes into README or a commit message.  This
module reads the identifying values of the study from its DICOM and looks for
them, and for fields that only ever hold identifying data, in every text file
that git tracks directly.  Annexed content (symlinks, binaries such as
``.nii.gz``) is not read, and subdatasets (``sourcedata/dicoms``) are skipped:
they are checked, or deliberately kept private, on their own.

A :class:`Finding` says where and what kind, never the value itself: findings
end up in CI logs.

Identifying fields (JSON keys at any depth and TSV header columns, compared
case-insensitively with ``_``, ``-`` and spaces ignored, so ``PatientName``
and ``patient_name`` are the same):

- always: PatientName, OtherPatientNames, PatientBirthName,
  PatientMotherBirthName, PatientBirthDate, PatientBirthTime, BirthDate,
  DateOfBirth, DOB, OtherPatientIDs, OtherPatientIDsSequence, PatientAddress,
  PatientTelephoneNumbers, PatientTelecomInformation, ReferringPhysicianName,
  ReferringPhysicianAddress, ReferringPhysicianTelephoneNumbers,
  AccessionNumber, MedicalRecordLocator;
- PatientID, unless the study allows ``patient-id``;
- StudyDate, SeriesDate, AcquisitionDate, ContentDate, InstanceCreationDate,
  unless it allows ``acquisition-date``;
- AcquisitionTime, AcquisitionDateTime, ContentTime, SeriesTime, StudyTime
  (and the TSV columns ``acq_time`` and ``time``, per non-``n/a`` cell),
  unless it allows ``acquisition-time``.

Staff names heudiconv keeps (``operator`` in ``*_scans.tsv``) and the
institution fields dcm2niix writes are not patient data and are not flagged.

DICOM files and archives of them in the dataset's own tree (ReproIn's
``sourcedata/sub-*/...dicom.tgz``, annexed or not) carry every header; they are
findings by name, without being read, unless the study allows
``dicom-archives`` (the conversion then keeps them; otherwise it drops them).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from .._proc import git
from ..errors import PhiError, UsageError

ALLOWANCES = frozenset({"patient-id", "acquisition-date", "acquisition-time", "dicom-archives"})
_DICOM_NAMES = (".dicom.tgz", ".dicom.tar.gz", ".dcm", ".dicom", ".ima")
_ARCHIVE_NAMES = (".tgz", ".tar", ".tar.gz", ".zip")

SHIFTED_DATE = "1925-01-01"  # BIDS: a year 1925 or earlier marks a shifted date
SMALL_TEXT_BYTES = 1 << 20  # files of no known kind are read only up to this size
_SKIP_DIRS = frozenset({".git", ".datalad"})
_BINARY_SUFFIXES = (".nii", ".gz", ".tgz", ".tar", ".zip", ".bz2", ".xz", ".zst", ".dcm", ".mgz", ".png",
                    ".jpg", ".jpeg", ".gif", ".pdf", ".h5", ".hdf5", ".npy", ".npz", ".mat", ".pyc")
_NA = frozenset({"", "n/a", "na"})

_IDENTIFYING = frozenset({
    "patientname", "otherpatientnames", "patientbirthname", "patientmotherbirthname",
    "patientbirthdate", "patientbirthtime", "birthdate", "dateofbirth", "dob",
    "otherpatientids", "otherpatientidssequence", "patientaddress", "patienttelephonenumbers",
    "patienttelecominformation", "referringphysicianname", "referringphysicianaddress",
    "referringphysiciantelephonenumbers", "accessionnumber", "medicalrecordlocator",
})
_DATE_KEYS = frozenset({"studydate", "seriesdate", "acquisitiondate", "contentdate", "instancecreationdate"})
_TIME_KEYS = frozenset({"acquisitiontime", "acquisitiondatetime", "contenttime", "seriestime", "studytime"})
_TIME_COLUMNS = frozenset({"acqtime", "time"})

# Word boundaries that treat '_' as a separator, as in 'Family_Given' or 'sub-x_ses-1'.
_START, _END = r"(?<![^\W_])", r"(?![^\W_])"
_NAME_SEPARATOR = r"[\s^_.,]+"


def parse_allow(text: str) -> frozenset[str]:
    """The allowances in ``text`` (comma or space separated); "" allows nothing."""
    words = [word.lower() for word in re.split(r"[\s,]+", text.strip()) if word]
    for word in words:
        if word not in ALLOWANCES:
            raise UsageError(f"unknown PHI allowance {word!r}",
                             hint=f"use any of {', '.join(sorted(ALLOWANCES))}, separated by commas or spaces")
    return frozenset(words)


@dataclass(frozen=True)
class Identity:
    """The identifying values of one study, read from its DICOM."""

    patient_names: tuple[str, ...]  # DICOM PN, e.g. "Family^Given"
    patient_ids: tuple[str, ...]
    birth_dates: tuple[str, ...]  # YYYYMMDD
    acquisition_dates: tuple[str, ...]  # YYYYMMDD
    accession_numbers: tuple[str, ...] = ()


def combine(identities: Iterable[Identity]) -> Identity:
    """One identity holding every value of ``identities`` (e.g. one per series)."""
    items = list(identities)

    def union(field: str) -> tuple[str, ...]:
        return tuple(sorted({value for item in items for value in getattr(item, field)}))

    return Identity(union("patient_names"), union("patient_ids"), union("birth_dates"),
                    union("acquisition_dates"), union("accession_numbers"))


def identity_from_dicom(path: Path) -> Identity:
    """The identity in the header of the DICOM file at ``path``."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PhiError(f"cannot read the DICOM header of {path}: {exc}",
                       hint="give a DICOM instance of the study") from exc
    return _identity(dataset, str(path))


def identity_from_archive(tar_path: Path) -> Identity:
    """The identity in the first regular member of a series archive (.tar, optionally gzipped).

    The member is read from the archive; nothing is extracted to disk.
    """
    try:
        with tarfile.open(tar_path, mode="r:*") as archive:
            for member in archive:
                if member.isreg():
                    stream = archive.extractfile(member)
                    if stream is None:
                        break
                    dataset = pydicom.dcmread(stream, stop_before_pixels=True, force=True)
                    return _identity(dataset, f"{tar_path} member {member.name}")
    except (tarfile.TarError, InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PhiError(f"cannot read a DICOM header from the archive {tar_path}: {exc}",
                       hint="give a series archive of the study") from exc
    raise PhiError(f"the archive {tar_path} holds no file", hint="give a series archive of the study")


def _identity(dataset: pydicom.Dataset, source: str) -> Identity:
    if "SOPInstanceUID" not in dataset and "StudyInstanceUID" not in dataset:
        raise PhiError(f"{source} is not a DICOM instance (no SOP or study instance UID)",
                       hint="give a DICOM instance of the study")
    try:
        names = _values(dataset, "PatientName", "OtherPatientNames")
        ids = _values(dataset, "PatientID", "OtherPatientIDs")
        ids += [str(item.get("PatientID", "")).strip() for item in dataset.get("OtherPatientIDsSequence") or []]
        births = _dates(dataset, "PatientBirthDate")
        acquired = _dates(dataset, "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                          "InstanceCreationDate", "AcquisitionDateTime")
        accessions = _values(dataset, "AccessionNumber")
    except (ValueError, TypeError, AttributeError) as exc:
        raise PhiError(f"cannot decode the patient fields of {source}: {exc}",
                       hint="check the DICOM header with dcmdump") from exc
    return Identity(_unique(names), _unique(ids), _unique(births), _unique(acquired), _unique(accessions))


def _values(dataset: pydicom.Dataset, *keywords: str) -> list[str]:
    found: list[str] = []
    for keyword in keywords:
        value = dataset.get(keyword)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
        found += [str(item).strip() for item in items]
    return found


def _dates(dataset: pydicom.Dataset, *keywords: str) -> list[str]:
    cleaned = (re.sub(r"[.\-]", "", value)[:8] for value in _values(dataset, *keywords))
    return [value for value in cleaned if re.fullmatch(r"\d{8}", value)]


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({value for value in values if value}))


@dataclass(frozen=True)
class Finding:
    """Identifying data found: where and what kind, never the value."""

    path: str  # relative to the dataset root, or "commit <short sha>"
    line: int | None
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}" if self.line is not None else f"{self.path}: {self.what}"


class _Matcher:
    """The identity's values as patterns, each with the kind of finding it makes."""

    def __init__(self, identity: Identity, allow: frozenset[str]):
        kinds: list[tuple[str, list[str]]] = [
            ("PatientName value", [alt for name in identity.patient_names for alt in _name_patterns(name)]),
            ("PatientID value", [] if "patient-id" in allow else _id_patterns(identity.patient_ids)),
            ("AccessionNumber value", _id_patterns(identity.accession_numbers)),
            ("birth date", _date_patterns(identity.birth_dates)),
            ("acquisition date", [] if "acquisition-date" in allow else _date_patterns(identity.acquisition_dates)),
        ]
        self.patterns = [(what, re.compile("|".join(alts), re.IGNORECASE)) for what, alts in kinds if alts]

    def kinds(self, text: str) -> list[str]:
        return [what for what, pattern in self.patterns if pattern.search(text)]

    def scan(self, path: str, text: str) -> list[Finding]:
        return [Finding(path, number, what)
                for number, line in enumerate(text.split("\n"), 1) for what in self.kinds(line)]


def _name_patterns(name: str) -> list[str]:
    """A PN value in its usual renderings; a single family or given name alone never matches."""
    parts = [part.strip() for part in name.split("=")[0].split("^")[:2]]
    parts = [part for part in parts if len(part) >= 2]
    words = [r"\s+".join(re.escape(word) for word in part.split()) for part in parts]
    if len(parts) == 1:
        return [f"{_START}{words[0]}{_END}"] if len(parts[0]) >= 3 else []
    if len(parts) == 2:
        family, given = words
        return [f"{_START}{family}{_NAME_SEPARATOR}{given}{_END}", f"{_START}{given}{_NAME_SEPARATOR}{family}{_END}"]
    return []


def _id_patterns(values: Iterable[str]) -> list[str]:
    # heudiconv makes a subject label of an ID by dropping what is not a letter or digit.
    forms = {form for value in values for form in (value, re.sub(r"[\W_]", "", value))}
    return [f"{_START}{re.escape(form)}{_END}" for form in sorted(forms) if len(form) >= 3]


def _date_patterns(dates: Iterable[str]) -> list[str]:
    return [rf"(?<!\d)(?:{d}|{d[:4]}-{d[4:6]}-{d[6:]})(?!\d)" for d in dates]


def _normal(field: str) -> str:
    return re.sub(r"[^a-z0-9]", "", field.lower())


def _identifying(field: str, allow: frozenset[str]) -> bool:
    """Whether a JSON key or TSV column is identifying under ``allow``."""
    name = _normal(field)
    return (name in _IDENTIFYING
            or (name == "patientid" and "patient-id" not in allow)
            or (name in _DATE_KEYS and "acquisition-date" not in allow)
            or (name in _TIME_KEYS and "acquisition-time" not in allow))


def check_tree(root: Path, identity: Identity, allow: frozenset[str], *,
               commit_messages: Mapping[str, str] | None = None) -> list[Finding]:
    """Every place under ``root`` (and in ``commit_messages``, sha -> message) with identifying
    data that ``allow`` does not allow, sorted by path and line."""
    unknown = set(allow) - ALLOWANCES
    if unknown:
        raise UsageError(f"unknown PHI allowance {sorted(unknown)[0]!r}",
                         hint=f"use any of {', '.join(sorted(ALLOWANCES))}")
    if not root.is_dir():
        raise PhiError(f"there is no dataset at {root}", hint="run the check in a clone of the BIDS dataset")
    matcher = _Matcher(identity, allow)
    findings: list[Finding] = []
    for path, rel in _files(root, findings):
        kind = _kind(rel)
        try:
            text = _read_text(path, kind)
        except OSError:
            findings.append(Finding(rel, None, "unreadable (cannot check)"))
            continue
        if text is None:
            continue
        if kind == "json":
            findings += _check_json(rel, text, matcher, allow)
        elif kind == "tsv":
            findings += _check_tsv(rel, text, matcher, allow)
        else:
            findings += matcher.scan(rel, text)
    if "dicom-archives" not in allow:
        findings += [Finding(rel, None, "DICOM data with every header (patient name, birth date...)")
                     for rel in _dicom_files(root)]
    for sha, message in (commit_messages or {}).items():
        findings += matcher.scan(f"commit {sha[:8]}", message)
    return sorted(set(findings), key=lambda f: (f.path, f.line or 0, f.what))


def _dicom_files(root: Path) -> Iterator[str]:
    """DICOM files and archives of them in the dataset's own tree, annexed or not (by name: not read)."""
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        dirnames[:] = sorted(name for name in dirnames if name not in _SKIP_DIRS
                             and not os.path.lexists(here / name / ".git"))
        for name in sorted(filenames):
            rel = (here / name).relative_to(root).as_posix()
            lower = name.lower()
            if lower.endswith(_DICOM_NAMES) or (rel.startswith("sourcedata/") and lower.endswith(_ARCHIVE_NAMES)):
                yield rel


def require_clean(findings: Sequence[Finding], *, study: str | None = None, shown: int = 20) -> None:
    """Raise :class:`PhiError` listing the first ``shown`` findings, if there are any."""
    if findings:
        listed = "; ".join(str(finding) for finding in findings[:shown])
        more = f"; and {len(findings) - shown} more" if len(findings) > shown else ""
        raise PhiError(f"{len(findings)} place(s) with identifying data the study does not allow: {listed}{more}",
                       study=study, hint="remove them, or scrub the dates, and convert again")


def read_commit_messages(root: Path, revisions: str) -> dict[str, str]:
    """The messages of the commits in ``revisions`` (e.g. ``main..HEAD``), by full sha."""
    out = git("log", "--format=%H%x00%B%x1e", revisions, "--", cwd=root, error=PhiError)
    messages: dict[str, str] = {}
    for record in out.split("\x1e"):
        sha, _, message = record.strip().partition("\x00")
        if sha:
            messages[sha] = message
    return messages


def _files(root: Path, problems: list[Finding]) -> Iterator[tuple[Path, str]]:
    """Regular files git tracks directly: no symlinks (annexed), no subdatasets, no .git."""

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename).relative_to(root).as_posix() if exc.filename else "."
        problems.append(Finding(where, None, "unreadable (cannot check)"))

    for folder, dirnames, filenames in os.walk(root, onerror=unreadable):
        here = Path(folder)
        dirnames[:] = sorted(name for name in dirnames if name not in _SKIP_DIRS
                             and not (here / name).is_symlink() and not os.path.lexists(here / name / ".git"))
        for name in sorted(filenames):
            path = here / name
            if not path.is_symlink() and path.is_file():
                yield path, path.relative_to(root).as_posix()


def _kind(rel: str) -> str | None:
    name = rel.rsplit("/", 1)[-1].lower()
    if name.endswith(".json"):
        return "json"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(_BINARY_SUFFIXES):
        return None
    if rel.startswith(".heudiconv/") or name.startswith(("readme", "changes")):
        return "text"
    return "small text"


def _read_text(path: Path, kind: str | None) -> str | None:
    if kind is None or (kind == "small text" and path.stat().st_size > SMALL_TEXT_BYTES):
        return None
    data = path.read_bytes()
    if kind == "small text" and b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def _check_json(rel: str, text: str, matcher: _Matcher, allow: frozenset[str]) -> list[Finding]:
    findings = matcher.scan(rel, text)
    try:
        document = json.loads(text)
    except ValueError:
        return findings  # still read as text above
    keys, strings = _json_parts(document)
    for key in sorted(k for k in keys if _identifying(k, allow)):
        line = re.compile(rf'"{re.escape(key)}"\s*:')
        numbers = [n for n, text_line in enumerate(text.split("\n"), 1) if line.search(text_line)]
        findings += [Finding(rel, n, f"key {key}") for n in numbers] or [Finding(rel, None, f"key {key}")]
    # Values written with JSON escapes (\u00e9, \/) do not match line by line; the parsed ones do.
    seen = {finding.what for finding in findings}
    for value in strings:
        for what in matcher.kinds(value):
            if what not in seen:
                findings.append(Finding(rel, None, what))
                seen.add(what)
    return findings


def _json_parts(node: Any) -> tuple[set[str], list[str]]:
    keys: set[str] = set()
    strings: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys.update(item)
            strings += list(item)
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str):
            strings.append(item)
    return keys, strings


def _check_tsv(rel: str, text: str, matcher: _Matcher, allow: frozenset[str]) -> list[Finding]:
    findings = matcher.scan(rel, text)
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    findings += [Finding(rel, 1, f"column {column}") for column in header if _identifying(column, allow)]
    if "acquisition-time" not in allow:
        times = [i for i, column in enumerate(header) if _normal(column) in _TIME_COLUMNS]
        for number, line in enumerate(lines[1:], 2):
            cells = line.rstrip("\r").split("\t")
            if any(i < len(cells) and cells[i].strip().lower() not in _NA for i in times):
                findings.append(Finding(rel, number, "acquisition time"))
    return findings


def scrub_acquisition_dates(root: Path) -> list[str]:
    """Set the date in every ``acq_time`` of the ``*_scans.tsv`` under ``root`` to 1925-01-01,
    keeping the time of day; return the relative paths of the files changed."""
    changed: list[str] = []
    for path, rel in _files(root, []):
        if not path.name.endswith("_scans.tsv"):
            continue
        try:
            text = path.read_bytes().decode("utf-8", errors="surrogateescape")
            scrubbed = _scrub_scans(text)
            if scrubbed != text:
                _write_atomically(path, scrubbed.encode("utf-8", errors="surrogateescape"))
                changed.append(rel)
        except OSError as exc:
            raise PhiError(f"cannot scrub the dates in {rel}: {exc.strerror or exc}",
                           hint="check that the dataset is writable") from exc
    return changed


def _scrub_scans(text: str) -> str:
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    if "acq_time" not in header:
        return text
    column = header.index("acq_time")
    for number in range(1, len(lines)):
        cells = lines[number].split("\t")
        if column >= len(cells):
            continue
        value = cells[column]
        match = re.fullmatch(r"(\s*)\d{4}-\d{2}-\d{2}(T.*|\s*)", value, re.DOTALL)
        if match:
            cells[column] = f"{match.group(1)}{SHIFTED_DATE}{match.group(2)}"
            lines[number] = "\t".join(cells)
    return "\n".join(lines)


def _write_atomically(path: Path, data: bytes) -> None:
    mode = path.stat().st_mode & 0o7777
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        if os.path.lexists(temp):
            os.unlink(temp)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
