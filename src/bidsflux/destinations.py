"""Results back to PACS: find a derivative's DICOM objects and C-STORE them.

A derivative job may write DICOM objects (a Basic Text SR from
:func:`make_sr`, a SEG); the ``dicom-send`` CI step sends them to configured
destinations or back to the modality that sent the study ("return to
sender").  Objects travel exactly as stored: one presentation context per
(SOP class, transfer syntax as stored) and no conversion, so a destination
that does not accept a file's own encoding gets that file counted as failed
rather than re-encoded.  Values read from DICOM files are hostile: they go to
pynetdicom and pydicom as data, never to a shell, and never to a log line
(logs carry the destination and counts only).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, UID, BasicTextSRStorage, ExplicitVRLittleEndian,
                         generate_uid)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import A_ASSOCIATE

from . import _datalad
from ._scu import guard_responses, set_nodelay
from ._settings_destinations import SENDER, Destination, host
from ._settings_fields import aet
from .errors import SendError, UsageError

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # presentation contexts one A-ASSOCIATE-RQ may propose
COPIED_FROM_REFERENCE = (  # patient and study modules, so that PACS files the SR with its study
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription",
)


@dataclass(frozen=True)
class SendReport:
    """Outcome of :func:`send` for one destination.

    ``files`` lists every file given, ``failures`` maps each one not stored
    (status other than 0x0000, unreadable, or not accepted in its own
    transfer syntax) to the reason.
    """

    destination: str
    sent: int
    failed: int
    files: list[str]
    failures: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{self.destination}: sent {self.sent}, failed {self.failed} of {len(self.files)} files"


class _Destinations(Protocol):
    @property
    def dicom_destinations(self) -> Mapping[str, Destination]: ...

    @property
    def sender_port(self) -> int | None: ...


# -- finding and choosing -----------------------------------------------------

def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(regular files and symlinks to present content, dangling symlinks) under ``root``, ``.git`` skipped."""
    present: list[Path] = []
    absent: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name != ".git"]  # symlinked folders are not followed
        for name in names:
            path = Path(folder, name)
            if path.is_file():
                present.append(path)
            elif path.is_symlink():  # annexed, content not here
                absent.append(path)
    return present, absent


def find_dicom(root: Path, *, get: bool = False) -> list[Path]:
    """DICOM files under ``root``: a ``DICM`` preamble or a ``.dcm`` name; ``.git`` skipped.

    Annexed files (symlinks) count when their content is present.  With
    ``get``, the content of every annexed file under ``root`` that is not
    present is fetched first (``datalad get``; point ``root`` at the DICOM
    folder of a large derivative); without, those files are skipped, with
    one warning giving their number.
    """
    present, absent = _walk(root)
    if absent and get:
        _datalad.get(root, [str(path.relative_to(root)) for path in absent], study=None, error=SendError)
        present, absent = _walk(root)
    if absent:
        log.warning("skipped %d file(s) under %s whose annexed content is not present (datalad get them first)",
                    len(absent), root)
    return sorted(path for path in present if _is_dicom(path))


def _sender_host(raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return host(raw)


def resolve(settings: _Destinations, names: Sequence[str], *,
            sender: tuple[str, str] | None) -> list[Destination]:
    """The destinations called ``names``, in order, each once.

    ``sender`` is the name of the modality that sent the study: its calling
    AE title and host from the ledger, with ``sender_port`` from the settings.
    """
    chosen: list[Destination] = []
    for name in dict.fromkeys(names):
        if name == SENDER:
            chosen.append(_return_to_sender(settings.sender_port, sender))
        elif name in settings.dicom_destinations:
            chosen.append(settings.dicom_destinations[name])
        else:
            configured = ", ".join([*sorted(settings.dicom_destinations), SENDER]) or "none"
            raise UsageError(f"no DICOM destination named {name!r}; configured: {configured}",
                             hint="add it to BIDSFLUX_DICOM_DESTINATIONS as NAME=AET@HOST:PORT")
    return chosen


def _return_to_sender(port: int | None, sender: tuple[str, str] | None) -> Destination:
    if port is None:
        raise UsageError("cannot return results to the sender: BIDSFLUX_SENDER_PORT is not set",
                         hint="set it to the port of the modality's own Storage SCP")
    if sender is None:
        raise UsageError("cannot return results to the sender: the study's sender is not known",
                         hint="only studies received by bids-flux have a sender in the ledger")
    calling, address = sender
    try:
        return Destination(name=SENDER, aet=aet(calling), host=_sender_host(address), port=port)
    except ValueError as exc:
        raise UsageError(f"cannot return results to the sender {calling!r} at {address!r}: {exc}") from None


# -- sending --------------------------------------------------------------------

def _context_of(path: Path) -> tuple[str, str]:
    """(SOP class, transfer syntax as stored), or ValueError saying why the file cannot go."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except Exception as exc:  # hostile bytes raise anything from struct.error to KeyError
        raise ValueError(f"not readable as a DICOM file ({type(exc).__name__})") from None
    meta = getattr(ds, "file_meta", None) or Dataset()
    sop_class = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")
    syntax = str(meta.get("TransferSyntaxUID") or "")
    if not UID(sop_class).is_valid or not UID(syntax).is_valid or "SOPInstanceUID" not in ds:
        raise ValueError("no valid SOP Class, SOP Instance or Transfer Syntax UID")
    return sop_class, syntax


def _refusal(connected: bool, rejection: A_ASSOCIATE | None, destination: Destination, calling_aet: str,
             study: str | None) -> SendError:
    if not connected:  # pynetdicom reports a refused connect() as an abort too
        return SendError(f"cannot reach DICOM destination {destination}", study=study, transient=True,
                         hint="check that it is running and listening on that host and port")
    if rejection is not None:
        rsp = rejection
        return SendError(
            f"DICOM destination {destination} rejected the association from '{calling_aet}' "
            f"({rsp.result_str}: {rsp.reason_str})", study=study, transient=rsp.result == 0x02,
            hint=f"check that its AE title is '{destination.aet}' and that it accepts '{calling_aet}'")
    return SendError(f"DICOM destination {destination} accepted the connection but aborted or did not "
                     "answer the association request", study=study, transient=True,
                     hint="check its log; it may not speak DICOM on that port")


def _associate(destination: Destination, contexts: Sequence[tuple[str, str]], calling_aet: str,
               timeout: float, study: str | None) -> Association | None:
    """An established association, or None where the peer accepted it but none of ``contexts``."""
    ae = AE(ae_title=calling_aet)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    connected: list[bool] = []
    rejected: list[A_ASSOCIATE] = []

    def opened(event: evt.Event) -> None:
        connected.append(True)
        set_nodelay(event)

    def received(event: evt.Event) -> None:
        # pynetdicom 3.0.4 may close the socket on a prompt A-ASSOCIATE-RJ before
        # its ACSE reads it, then reports an abort (is_rejected stays False);
        # the PDU event still sees the rejection.
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejected.append(event.pdu.to_primitive())

    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.aet,
                             evt_handlers=[(evt.EVT_CONN_OPEN, opened), (evt.EVT_PDU_RECV, received)])
    except (OSError, ValueError) as exc:
        raise SendError(f"cannot reach DICOM destination {destination}: {exc}", study=study, transient=True,
                        hint="check its host name and port") from exc
    answer = assoc.acceptor.primitive
    if not assoc.is_established and answer is not None and answer.result == 0x00:
        return None  # pynetdicom aborts an association without a single accepted context
    if not assoc.is_established:
        rejection = answer if assoc.is_rejected else None
        raise _refusal(bool(connected), rejection or (rejected[0] if rejected else None), destination,
                       calling_aet, study)
    guard_responses(assoc)
    return assoc


def _dropped(destination: Destination, done: int, total: int, study: str | None) -> SendError:
    return SendError(f"DICOM destination {destination} dropped the association at file {done + 1} of {total}",
                     study=study, transient=True, hint="check its log and free disk space, then send again")


def _store_all(assoc: Association | None, batch: list[tuple[Path, tuple[str, str]]], destination: Destination,
               failures: dict[str, str], study: str | None) -> int:
    """C-STORE each file of ``batch`` in its own encoding; return how many were stored."""
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
                if cx.as_scu} if assoc is not None else set()
    sent = 0
    for done, (path, context) in enumerate(batch):
        if assoc is None or context not in accepted:
            failures[str(path)] = f"not accepted as {UID(context[0]).name} in {UID(context[1]).name}"
            continue
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # changed or hostile since it was first read
            failures[str(path)] = f"not readable as a DICOM file ({type(exc).__name__})"
            continue
        try:
            if not assoc.is_established:
                raise RuntimeError("association no longer established")
            status = assoc.send_c_store(ds, msg_id=done % 65535 + 1)
        except RuntimeError as exc:  # pynetdicom's answer to sending on a dead association
            raise _dropped(destination, done, len(batch), study) from exc
        except (AttributeError, ValueError) as exc:  # pynetdicom could not encode it
            failures[str(path)] = f"cannot be encoded for sending ({type(exc).__name__})"
            continue
        code = getattr(status, "Status", None)
        if code is None:  # no answer: the peer aborted, or pynetdicom did on its DIMSE timeout
            raise _dropped(destination, done, len(batch), study)
        if code == 0x0000:
            sent += 1
        else:
            failures[str(path)] = f"status 0x{int(code):04X}"
    return sent


def send(files: Sequence[Path], destination: Destination, *, calling_aet: str, timeout: float,
         study: str | None) -> SendReport:
    """C-STORE ``files`` to ``destination`` as they are stored; one association per 128 contexts.

    Raises :class:`SendError` when the destination cannot be reached, refuses
    the association or drops it; a file it answers with a non-success status
    only counts as failed.
    """
    try:
        calling_aet = aet(calling_aet)
    except ValueError as exc:
        raise SendError(f"invalid calling AE title {calling_aet!r}: {exc}", study=study) from None
    failures: dict[str, str] = {}
    planned: list[tuple[Path, tuple[str, str]]] = []
    for path in files:
        try:
            planned.append((path, _context_of(path)))
        except ValueError as exc:
            failures[str(path)] = str(exc)
    contexts = list(dict.fromkeys(context for _, context in planned))
    log.info("sending %d file(s) to %s", len(planned), destination, extra={"study_uid": study})
    sent = 0
    for start in range(0, len(contexts), MAX_CONTEXTS):
        chunk = set(contexts[start:start + MAX_CONTEXTS])
        assoc = _associate(destination, contexts[start:start + MAX_CONTEXTS], calling_aet, timeout, study)
        try:
            sent += _store_all(assoc, [item for item in planned if item[1] in chunk], destination, failures,
                               study)
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()
            elif assoc is not None:
                assoc.abort()
    report = SendReport(destination=str(destination), sent=sent, failed=len(failures),
                        files=[str(path) for path in files], failures=failures)
    log.log(logging.WARNING if failures else logging.INFO, "%s", report.summary(), extra={"study_uid": study})
    return report


# -- making a report to send ------------------------------------------------------

def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _row_text(row: Mapping[str, str]) -> str:
    """``{"image": "T1w", "mean": "412.3"}`` -> ``T1w: mean 412.3``."""
    pairs = list(row.items())
    if not pairs:
        raise ValueError("an SR row needs at least one value")
    if len(pairs) == 1:
        return f"{pairs[0][0]}: {pairs[0][1]}"
    label, rest = pairs[0][1], pairs[1:]
    return f"{label}: " + ", ".join(f"{key} {value}" for key, value in rest)


def make_sr(stats: list[dict[str, str]], reference: Path, out: Path, *, title: str) -> Path:
    """Write a Basic Text SR to ``out`` that belongs to the study of ``reference``.

    Patient and study attributes are copied from ``reference`` so that a
    PACS files the report with the study; the series and instance are new.
    Each row of ``stats`` becomes one TEXT item (first value as its label).
    """
    if not title.strip() or len(title) > 64 or "\\" in title or not title.isprintable():
        raise ValueError("the SR title must be 1-64 printable characters without backslash")
    source = pydicom.dcmread(reference, stop_before_pixels=True)
    now = datetime.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: copied names keep every character
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    for keyword in COPIED_FROM_REFERENCE:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):  # type 2: present, maybe empty
        ds.setdefault(keyword, "")
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "SR", generate_uid(), 9001
    ds.SeriesDescription = title
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.Manufacturer = "bids-flux"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = DicomSequence()
    evidence = Dataset()  # the reference instance, so that the report points at what it describes
    evidence.StudyInstanceUID = source.StudyInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    instance = Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    series.ReferencedSOPSequence = DicomSequence([instance])
    evidence.ReferencedSeriesSequence = DicomSequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([evidence])
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence([_code("RESULTS", "99BIDSFLUX", title)])
    items = []
    for row in stats:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
        item.ConceptNameCodeSequence = DicomSequence([_code("121071", "DCM", "Finding")])
        item.TextValue = _row_text(row)
        items.append(item)
    if items:
        ds.ContentSequence = DicomSequence(items)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    with partial.open("wb") as handle:  # visible under its name only when complete
        pydicom.dcmwrite(handle, ds, enforce_file_format=True)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(out)
    return out
