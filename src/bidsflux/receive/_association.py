"""One association, from A-ASSOCIATE-RQ to release or abort, on its own thread.

Negotiation checks who is calling (AE titles, allow-list, association limit)
and accepts every storage SOP class in the transfer syntax the sender
prefers, so the data set can be kept exactly as encoded.  Then C-ECHO and
C-STORE requests are answered in turn; anything else gets "unrecognised
operation".  Nothing raised here reaches the peer as anything but a DICOM
status, an A-ABORT, or a closed connection.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _dimse as dimse
from . import _wire as wire
from ._part10 import IMPLEMENTATION_UID, IMPLEMENTATION_VERSION
from ._policy import TRANSFER_SYNTAXES, VERIFICATION, EndpointOptions, Pressure
from ._filer import Filer
from ._journal import Writer
from ._state import AssociationRecord, ReceiveState, StudyCounters
from ._store import StoreHandler
from .spool import Spool

log = logging.getLogger(__name__)


@dataclass
class Shared:
    """What every association of one endpoint uses."""

    spool: Spool
    state: ReceiveState
    aet: str
    options: EndpointOptions
    pressure: Pressure
    on_new_study: Callable[[str, StudyCounters], None] | None


class Refused(Exception):
    def __init__(self, result: int, source: int, reason: int, why: str):
        super().__init__(why)
        self.pdu = wire.encode_associate_rj(result, source, reason)


def _printable_title(raw: bytes) -> bool:
    text = raw.rstrip(b" \0").lstrip(b" ")
    return bool(text) and all(0x20 <= b < 0x7F and b != 0x5C for b in text)


class Association:
    def __init__(self, shared: Shared, sock: socket.socket, peer: tuple[Any, ...], tls: ssl.SSLContext | None):
        self.shared = shared
        self.sock = sock
        self.address = str(peer[0])
        self.peer = f"{peer[0]}:{peer[1]}"
        self.tls = tls
        self.record: AssociationRecord | None = None
        self.store: StoreHandler | None = None  # the C-STORE in flight, discarded if the association dies
        self.writer: Writer | None = None
        self.filer: Filer | None = None

    # -- the thread's body
    def run(self) -> None:
        options = self.shared.options
        try:
            self.sock.settimeout(options.acse_timeout)
            if self.tls is not None:
                try:
                    self.sock = self.tls.wrap_socket(self.sock, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.warning("refused a TLS connection from %s: %s", self.peer, exc)
                    with self.shared.state.lock:
                        self.shared.state.refused_associations += 1
                    return
            reader = wire.PduReader(self.sock)
            kind, body = reader.read()
            if kind != wire.ASSOCIATE_RQ:
                raise wire.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{kind:02x}")
            rq = wire.parse_associate_rq(body)
            try:
                contexts = self._negotiate(rq)
            except Refused as refusal:
                log.warning("refused association from %r (%s) to %r: %s", rq.calling_aet, self.peer,
                            rq.called_aet, refusal)
                with self.shared.state.lock:
                    self.shared.state.refused_associations += 1
                self.sock.sendall(refusal.pdu)
                return
            self.sock.settimeout(options.network_timeout)
            self.record = self.shared.state.association_opened(rq.calling_aet, self.peer, self.tls is not None)
            self.writer = self.shared.spool.writer()
            self.filer = Filer(f"dicom-filer-{self.peer}")
            released = False
            try:
                released = self._serve(reader, rq.calling_aet, contexts)
            finally:
                if self.store is not None:
                    self.store.discard()
                    self.store = None
                self.filer.close()  # everything acknowledged is filed before the association counts as ended
                self.writer.close()
                self.shared.state.association_closed(self.record, released=released)
        except (wire.ProtocolError, dimse.CommandError) as exc:
            log.warning("aborting association with %s: %s", self.peer, exc)
            self._send_quietly(wire.encode_abort(2, 0))
        except (ConnectionError, TimeoutError, socket.timeout, ssl.SSLError, OSError) as exc:
            log.info("association with %s ended: %s", self.peer, exc or type(exc).__name__)
        except Exception:  # noqa: BLE001 - a bug here must not take the endpoint down
            log.exception("internal error on the association with %s", self.peer)
            self._send_quietly(wire.encode_abort(2, 0))
        finally:
            if self.store is not None:
                self.store.discard()
            self.close()

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def interrupt(self) -> None:
        """Called from another thread when the stop grace period is over."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- negotiation
    def _negotiate(self, rq: wire.AssociateRequest) -> dict[int, tuple[str, str]]:
        options, state = self.shared.options, self.shared.state
        if rq.application_context != wire.APPLICATION_CONTEXT:
            raise Refused(wire.RJ_PERMANENT, wire.RJ_USER, wire.REASON_APP_CONTEXT,
                          f"unknown application context {rq.application_context!r}")
        if not _printable_title(rq.raw_calling):
            raise Refused(wire.RJ_PERMANENT, wire.RJ_USER, wire.REASON_CALLING_AE, "calling AE title is not valid")
        if not _printable_title(rq.raw_called) or (options.check_called_aet and rq.called_aet != self.shared.aet):
            raise Refused(wire.RJ_PERMANENT, wire.RJ_USER, wire.REASON_CALLED_AE,
                          f"called AE title is not {self.shared.aet!r}")
        if not options.allow.allows(rq.calling_aet, self.address):
            raise Refused(wire.RJ_PERMANENT, wire.RJ_USER, wire.REASON_CALLING_AE,
                          "calling AE title and address are not on the allow-list")
        with state.lock:
            busy = state.active_associations >= options.max_associations
        if busy:
            raise Refused(wire.RJ_TRANSIENT, wire.RJ_PRESENTATION, wire.REASON_LOCAL_LIMIT,
                          f"already {options.max_associations} associations open")
        answers, accepted = [], {}
        for cx in rq.contexts:
            if not options.accepts_abstract(cx.abstract_syntax):
                answers.append(wire.AcceptedContext(cx.context_id, wire.PC_ABSTRACT_UNSUPPORTED,
                                                    cx.transfer_syntaxes[0] if cx.transfer_syntaxes else ""))
                continue
            # The sender's order is its preference: the first syntax we know keeps its encoding as sent.
            chosen = next((ts for ts in cx.transfer_syntaxes if ts in TRANSFER_SYNTAXES), None)
            if chosen is None:
                answers.append(wire.AcceptedContext(cx.context_id, wire.PC_TRANSFER_UNSUPPORTED,
                                                    cx.transfer_syntaxes[0] if cx.transfer_syntaxes else ""))
                continue
            answers.append(wire.AcceptedContext(cx.context_id, wire.PC_ACCEPT, chosen))
            accepted[cx.context_id] = (cx.abstract_syntax, chosen)
        self.sock.sendall(wire.encode_associate_ac(
            rq, answers, max_pdu=options.max_pdu, implementation_uid=IMPLEMENTATION_UID,
            implementation_version=IMPLEMENTATION_VERSION))
        log.debug("association from %r (%s): %d of %d contexts accepted", rq.calling_aet, self.peer,
                  len(accepted), len(rq.contexts))
        return accepted

    # -- the DIMSE loop
    def _serve(self, reader: wire.PduReader, calling_aet: str, contexts: dict[int, tuple[str, str]]) -> bool:
        """Answer requests until the peer releases (True) or aborts (False)."""
        command_bytes = bytearray()
        command: dimse.Command | None = None
        command_context = 0
        while True:
            kind, body = reader.read()
            if kind in (wire.RELEASE_RQ, wire.ABORT):
                if self.store is not None:
                    self.store.discard()
                    self.store = None
                if kind == wire.ABORT:
                    return False
                assert self.filer is not None
                self.filer.drain()  # so that a released association has everything filed where it belongs
                self.sock.sendall(wire.encode_release_rp())
                return True
            if kind != wire.P_DATA_TF:
                raise wire.ProtocolError(f"unexpected PDU type 0x{kind:02x} during the association")
            for context_id, control, data in wire.iter_pdvs(body):
                if context_id not in contexts:
                    raise wire.ProtocolError(f"PDV on presentation context {context_id}, which was not accepted")
                if control & 1:
                    if command is not None:
                        raise wire.ProtocolError("a new command before the data set of the previous one")
                    command_bytes += data
                    if not control & 2:
                        continue
                    command, command_context = dimse.parse_command(bytes(command_bytes)), context_id
                    command_bytes.clear()
                    self.store = self._begin(command, contexts[context_id], calling_aet)
                    if not command.has_data_set:
                        self._answer(command, context_id)
                        command = None
                    continue
                if command is None or context_id != command_context:
                    raise wire.ProtocolError("a data set fragment without its command")
                if self.store is not None:
                    self.store.write(data)
                if control & 2:
                    self._answer(command, context_id)
                    command = None

    def _begin(self, command: dimse.Command, context: tuple[str, str], calling_aet: str) -> StoreHandler | None:
        if command.field != dimse.C_STORE_RQ or not command.has_data_set:
            return None
        assert self.record is not None
        return StoreHandler(self.shared, self.record, command, context, calling_aet, self.writer)

    def _answer(self, command: dimse.Command, context_id: int) -> None:
        store, self.store = self.store, None
        if command.field == dimse.C_CANCEL_RQ:
            return
        if command.field == dimse.C_ECHO_RQ:
            request = dimse.Command(command.field, command.message_id, command.sop_class_uid or VERIFICATION,
                                    "", False)
            response = dimse.encode_response(request, dimse.SUCCESS)
        elif store is not None:
            status, comment, then = store.finish()
            self.sock.sendall(wire.encode_p_data(context_id, dimse.encode_response(command, status, comment=comment),
                                                 command=True))
            if then is not None:
                assert self.filer is not None
                self.filer.submit(then, store.size)  # filed while the next instance arrives
            return
        elif command.field == dimse.C_STORE_RQ:
            response = dimse.encode_response(command, dimse.CANNOT_UNDERSTAND, comment="C-STORE without a data set")
        else:
            response = dimse.encode_response(command, dimse.UNRECOGNIZED_OPERATION,
                                             comment="this endpoint only stores (C-STORE) and echoes (C-ECHO)")
        self.sock.sendall(wire.encode_p_data(context_id, response, command=True))
