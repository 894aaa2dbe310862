"""The DICOM endpoint on pynetdicom: C-ECHO and C-STORE into the spool.

The C-STORE handler never raises into the network layer: it writes the
encoded dataset as received (no decoding of pixel data, no re-encoding) into
the spool, then answers.  A success status goes back only after the file is
fsynced and renamed into place.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ..errors import ReceiveError
from .spool import Spool, StoreOutcome

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700


@dataclass
class StudyCounters:
    """What one study has received so far in this process."""

    calling_aet: str
    peer: str
    instances: int = 0
    bytes: int = 0
    series: set[str] = field(default_factory=set)
    duplicates: int = 0
    conflicts: int = 0
    first_arrival: float = field(default_factory=time.time)
    last_arrival: float = field(default_factory=time.time)


class ReceiveState:
    """Shared between the endpoint threads and the assembler."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.studies: dict[str, StudyCounters] = {}
        self.active_associations = 0

    def record(self, study_uid: str, series_uid: str, size: int, outcome: StoreOutcome,
               calling_aet: str, peer: str) -> bool:
        """Count one instance; returns True when the study is new to this process."""
        now = time.time()
        with self.lock:
            counters = self.studies.get(study_uid)
            is_new = counters is None
            if counters is None:
                counters = self.studies[study_uid] = StudyCounters(calling_aet, peer)
            counters.last_arrival = now
            if outcome is StoreOutcome.STORED:
                counters.instances += 1
                counters.bytes += size
                counters.series.add(series_uid)
            elif outcome is StoreOutcome.DUPLICATE:
                counters.duplicates += 1
            else:
                counters.conflicts += 1
        return is_new

    def pop(self, study_uid: str) -> StudyCounters | None:
        with self.lock:
            return self.studies.pop(study_uid, None)


class Endpoint:
    """A running DICOM endpoint; ``stop()`` ends it."""

    def __init__(self, spool: Spool, *, aet: str, host: str, port: int,
                 on_new_study: Callable[[str, StudyCounters], None] | None = None):
        self.spool = spool
        self.state = ReceiveState()
        self._on_new_study = on_new_study
        self._ae = AE(ae_title=aet)
        self._ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs from the sender
        for context in AllStoragePresentationContexts:
            self._ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_CONN_OPEN, self._handle_open),
            (evt.EVT_CONN_CLOSE, self._handle_close),
        ]
        try:
            self._server = self._ae.start_server((host, port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ReceiveError(f"cannot listen on {host}:{port}: {exc.strerror}",
                               hint="pick a free port with STORESCP_PORT") from exc
        self.host, self.port = self._server.server_address[:2]

    def _handle_open(self, event: Any) -> None:
        # Nagle plus delayed ACK costs ~40 ms per C-STORE on small instances.
        try:
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass
        with self.state.lock:
            self.state.active_associations += 1

    def _handle_close(self, event: Any) -> None:
        with self.state.lock:
            self.state.active_associations -= 1

    def _handle_store(self, event: Any) -> int:
        requestor = event.assoc.requestor
        calling_aet = str(requestor.ae_title).strip()
        peer = f"{requestor.address}:{requestor.port}"
        try:
            data = event.encoded_dataset()
        except Exception:  # noqa: BLE001 - never raise into the network layer
            log.exception("cannot read a C-STORE dataset from %s (%s)", calling_aet, peer)
            return STATUS_CANNOT_UNDERSTAND
        try:
            ds = event.dataset
            study_uid = str(ds.StudyInstanceUID)
            series_uid = str(ds.SeriesInstanceUID)
            sop_uid = str(event.request.AffectedSOPInstanceUID)
            outcome = self.spool.store(study_uid, series_uid, sop_uid, data)
        except OSError as exc:
            log.error("cannot keep an instance from %s (%s): %s", calling_aet, peer, exc.strerror)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # noqa: BLE001 - bad input is quarantined, not dropped
            reason = f"cannot file the instance: {type(exc).__name__}: {str(exc)[:200]}"
            try:
                path = self.spool.quarantine_bytes(data, reason, {"calling_aet": calling_aet, "peer": peer})
            except OSError:
                return STATUS_OUT_OF_RESOURCES
            log.warning("quarantined an instance from %s (%s) at %s: %s", calling_aet, peer, path, reason)
            return STATUS_CANNOT_UNDERSTAND
        if self.state.record(study_uid, series_uid, len(data), outcome, calling_aet, peer):
            if self._on_new_study is not None:
                self._on_new_study(study_uid, self.state.studies[study_uid])
        if outcome is StoreOutcome.CONFLICT:
            # Kept durably aside, so the sender need not retry; the ledger shows it.
            log.warning("instance %s resent with different bytes; kept aside as a conflict", sop_uid,
                        extra={"study_uid": study_uid})
        return STATUS_SUCCESS

    def stop(self) -> None:
        self._server.shutdown()
