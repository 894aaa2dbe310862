"""Send a synthetic study to a DICOM Storage SCP over one association.

This is the "scanner pushes to PACS" half of the simulation: one A-ASSOCIATE
for MR Image Storage (explicit and implicit VR little endian offered), one
C-STORE per instance in acquisition order, then A-RELEASE.  TCP_NODELAY is
set on the socket as soon as it connects, because C-STORE is a strict
request/response exchange of small PDUs and Nagle's algorithm would otherwise
add up to ~40 ms of delay per instance on loopback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType

from bidsflux._scu import guard_responses, set_nodelay
from bidsflux.errors import ScannerError
from bidsflux.scanner._generate import StudySpec, generate_study, instance_count, study_uid

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SendResult:
    """Outcome of :func:`send_study`.

    ``sent`` counts instances the peer answered with status 0x0000, ``failed``
    every other answer (warnings included, as the archive may have altered
    them); ``bytes`` counts what was written to the socket, PDU headers and
    DIMSE commands included.
    """

    study_uid: str
    sent: int
    failed: int
    series: int
    bytes: int


def _refusal(
    assoc: Association, connected: bool, where: str, called_aet: str, calling_aet: str, study: str
) -> ScannerError:
    """Translate a failed association into an error that says what to check."""
    if not connected:  # pynetdicom reports a refused connect() as an abort too
        return ScannerError(
            f"cannot reach DICOM peer {where}",
            study=study,
            hint="check that the receiver is running and listening on that host and port",
        )
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        detail = f" (result {rsp.result_str}, source {rsp.source_str}, reason {rsp.reason_str})" if rsp else ""
        return ScannerError(
            f"DICOM peer {where} rejected the association from '{calling_aet}' to '{called_aet}'{detail}",
            study=study,
            hint=f"check that the receiver's AE title is '{called_aet}' and that it accepts '{calling_aet}'",
        )
    return ScannerError(
        f"DICOM peer {where} accepted the connection but aborted or ignored the association request",
        study=study,
        hint="check the receiver's log; it may not speak DICOM on that port",
    )


def send_study(
    spec: StudySpec,
    host: str,
    port: int,
    *,
    called_aet: str = "BIDSFLUX",
    calling_aet: str = "SYNTHSCANNER",
    progress: ProgressCallback | None = None,
) -> SendResult:
    """Generate ``spec`` and C-STORE every instance to ``host:port``.

    ``progress(done, total)`` is called after each instance.  Raises
    :class:`ScannerError` if the association cannot be established or the
    peer drops it part-way; individual refused instances only count as failed.
    """
    where = f"{host}:{port}"
    uid = study_uid(spec)
    total = instance_count(spec)
    for title in (called_aet, calling_aet):  # pynetdicom would raise a bare ValueError later
        if not 0 < len(title.strip()) <= 16 or "\\" in title or not title.isprintable():
            raise ScannerError(f"invalid AE title {title!r} for sending to {where}", study=uid,
                               hint="use 1 to 16 printable characters without a backslash")
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    ae.connection_timeout = 10  # fail fast when nothing listens

    wire = [0]
    connected: list[bool] = []

    def _opened(event: evt.Event) -> None:
        connected.append(True)
        set_nodelay(event)

    def _count(event: evt.Event) -> None:
        wire[0] += len(event.data)

    handlers: list[EventHandlerType] = [(evt.EVT_CONN_OPEN, _opened), (evt.EVT_DATA_SENT, _count)]
    try:
        assoc = ae.associate(host, port, ae_title=called_aet, evt_handlers=handlers)
    except (OSError, ValueError) as exc:  # e.g. unresolvable host name
        raise ScannerError(f"cannot reach DICOM peer {where}: {exc}", study=uid,
                           hint="check the host name and port of the receiver") from exc
    if not assoc.is_established:
        raise _refusal(assoc, bool(connected), where, called_aet, calling_aet, uid)

    sent = failed = done = 0
    series: set[str] = set()
    guard_responses(assoc)
    try:
        if not any(cx.abstract_syntax == MRImageStorage for cx in assoc.accepted_contexts):
            raise ScannerError(f"DICOM peer {where} accepted the association but not MR Image Storage",
                               study=uid, hint="configure the receiver to accept MR Image Storage")
        for ds in generate_study(spec):
            try:
                if not assoc.is_established:
                    raise RuntimeError("association no longer established")
                status = assoc.send_c_store(ds, msg_id=done % 65536 + 1)
            except RuntimeError as exc:  # pynetdicom's answer to sending on a dead association
                raise ScannerError(
                    f"DICOM peer {where} dropped the association after {done} of {total} instances",
                    study=uid, hint="check the receiver's log and free disk space, then send again") from exc
            done += 1
            if getattr(status, "Status", None) == 0x0000:
                sent += 1
            else:  # no answer (empty status) or any non-success code
                failed += 1
            series.add(str(ds.SeriesInstanceUID))
            if progress is not None:
                progress(done, total)
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
    return SendResult(study_uid=uid, sent=sent, failed=failed, series=len(series), bytes=wire[0])
