"""One C-STORE: the data set streamed into the spool, checked, filed, and a status for the sender.

The status is decided only after the instance is durable (filed, or kept in
quarantine or among the conflicts).  Every refusal carries its reason: in
the response's ErrorComment, in the log, and, for an instance that cannot
be filed, in the reason file beside it, from which the ledger takes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..naming import is_uid
from . import _dimse as dimse
from ._dataset import Header, HeaderError, NeedMore, read_header
from ._files import Incoming
from ._journal import Writer
from ._part10 import file_meta
from ._state import AssociationRecord
from .spool import StoreOutcome

Answer = tuple[int, "str | None", "Callable[[], None] | None"]

if TYPE_CHECKING:
    from ._association import Shared

log = logging.getLogger(__name__)


def _shown(value: str) -> str:
    return repr(value[:80]) + ("..." if len(value) > 80 else "")


class StoreHandler:
    def __init__(self, shared: Shared, record: AssociationRecord, command: dimse.Command,
                 context: tuple[str, str], calling_aet: str, writer: Writer | None):
        self.shared = shared
        self.record = record
        self.command = command
        self.abstract_syntax, self.transfer_syntax = context
        self.calling_aet = calling_aet
        self.refusal = shared.pressure.reason()
        self.incoming: Incoming | None = None
        self.size = 0
        if self.refusal is None:
            uids_ok = is_uid(command.sop_class_uid) and is_uid(command.sop_instance_uid)
            # Without valid UIDs there is no honest File Meta Information: such data is only quarantined.
            meta = file_meta(command.sop_class_uid, command.sop_instance_uid, self.transfer_syntax,
                             calling_aet) if uids_ok else b""
            self.incoming = shared.spool.begin(meta, writer if meta else None)

    def write(self, data: memoryview) -> None:
        if self.incoming is not None:
            self.incoming.write(data)

    def discard(self) -> None:
        if self.incoming is not None:
            self.incoming.discard()
            self.incoming = None

    def _info(self) -> dict[str, object]:
        return {"calling_aet": self.calling_aet, "peer": self.record.peer, "association": self.record.id,
                "transfer_syntax": self.transfer_syntax, "sop_class": self.command.sop_class_uid[:80],
                "sop_instance": self.command.sop_instance_uid[:80], "at": time.time()}

    def finish(self) -> Answer:
        """Make the instance durable; return the C-STORE status, for a failure why, and what to do
        once the answer is sent (file a journaled instance under its study)."""
        if self.incoming is None:
            log.warning("refused an instance from %s (%s): %s", self.calling_aet, self.record.peer, self.refusal)
            return dimse.OUT_OF_RESOURCES, self.refusal, None
        incoming, self.incoming = self.incoming, None
        try:
            return self._file(incoming)
        except OSError as exc:
            incoming.discard()
            log.error("cannot keep an instance from %s (%s): %s", self.calling_aet, self.record.peer, exc)
            return dimse.OUT_OF_RESOURCES, f"cannot keep the instance: {exc.strerror or exc}", None

    def _file(self, incoming: Incoming) -> Answer:
        command = self.command
        try:
            head = incoming.head(65536)
            try:
                header = read_header(head, self.transfer_syntax, complete=len(head) >= incoming.size)
            except NeedMore:
                header = read_header(incoming.data_set(), self.transfer_syntax, complete=True)
        except HeaderError as exc:
            return self._quarantine(incoming, dimse.CANNOT_UNDERSTAND, f"unreadable data set: {exc}", None)
        study = header.study_uid
        if not is_uid(command.sop_instance_uid) or not is_uid(command.sop_class_uid):
            return self._quarantine(incoming, dimse.CANNOT_UNDERSTAND,
                                    f"the C-STORE request's SOP UIDs are not valid: class "
                                    f"{_shown(command.sop_class_uid)}, instance {_shown(command.sop_instance_uid)}",
                                    study)
        if header.sop_instance_uid != command.sop_instance_uid or (
                header.sop_class_uid and header.sop_class_uid != command.sop_class_uid):
            return self._quarantine(incoming, dimse.DATA_SET_MISMATCH,
                                    f"the data set's SOP UIDs ({_shown(header.sop_class_uid)}, "
                                    f"{_shown(header.sop_instance_uid)}) differ from the request's", study)
        for label, value in (("StudyInstanceUID", study), ("SeriesInstanceUID", header.series_uid)):
            if not is_uid(value):
                return self._quarantine(incoming, dimse.CANNOT_UNDERSTAND,
                                        f"{label} {_shown(value)} is not a valid DICOM UID", study)
        size = self.size = incoming.size
        info = {"calling_aet": self.calling_aet, "peer": self.record.peer}
        series = header.series_uid
        sop = command.sop_instance_uid
        spool = self.shared.spool
        if incoming.journaled:
            writer = incoming.writer
            assert writer is not None
            end = spool.append(incoming, study, series, sop, info)
            with incoming.file_bytes() as view:
                data = bytes(view)  # the arena is reused for the next instance while this one is filed
            incoming.discard()

            def file_it() -> None:
                try:
                    outcome = spool.file(writer, data, study, series, sop, info, end)
                except OSError as exc:
                    # Durable in the journal: filed again at the next start.
                    log.error("cannot file instance %s (kept in the journal until a restart): %s", sop, exc,
                              extra={"study_uid": study})
                    return
                self._counted(study, header, size, outcome)

            return dimse.SUCCESS, None, file_it
        outcome = spool.commit(incoming, study, series, sop, info)
        self._counted(study, header, size, outcome)
        return dimse.SUCCESS, None, None

    def _counted(self, study: str, header: Header, size: int, outcome: StoreOutcome) -> None:
        if self.shared.state.record(study, header.series_uid, size, outcome, self.record,
                                    description=header.series_description, modality=header.modality):
            self._announce(study)
        if outcome is StoreOutcome.CONFLICT:
            # Kept durably aside, so the sender need not retry; the ledger shows it.
            log.warning("instance %s resent with different bytes; kept aside as a conflict",
                        header.sop_instance_uid, extra={"study_uid": study})

    def _announce(self, study: str) -> None:
        callback = self.shared.on_new_study
        if callback is None:
            return
        counters = self.shared.state.snapshot(study)
        if counters is None:
            return
        try:
            callback(study, counters)
        except Exception:  # noqa: BLE001 - the instance is kept; a failing hook must not fail the sender
            log.exception("on_new_study failed", extra={"study_uid": study})

    def _quarantine(self, incoming: Incoming, status: int, reason: str, study: str | None) -> Answer:
        info = self._info()
        if study is not None:
            info["study_uid"] = study[:80]
        path = self.shared.spool.quarantine(incoming, None, reason, info)
        log.warning("quarantined an instance from %s (%s) at %s: %s", self.calling_aet, self.record.peer,
                    path, reason)
        return status, reason, None
