"""DICOM Upper Layer PDUs (PS3.8 section 9.3): reading them off a socket, encoding answers.

This is the part of the network engine that touches bytes on the wire.  It
decodes what a Storage SCU sends (A-ASSOCIATE-RQ, P-DATA-TF, A-RELEASE-RQ,
A-ABORT) and encodes the SCP's answers.  The request encoder and the
accept decoder exist too, so that tests and the benchmark can speak to the
endpoint byte by byte (hostile peers included) without another library.

Every length read off the wire is checked against what is left, so a
truncated or lying PDU is a :class:`ProtocolError`, never an IndexError.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 table 9-21.
RJ_PERMANENT, RJ_TRANSIENT = 1, 2
RJ_USER, RJ_ACSE, RJ_PRESENTATION = 1, 2, 3
REASON_NONE, REASON_APP_CONTEXT, REASON_CALLING_AE, REASON_CALLED_AE = 1, 2, 3, 7
REASON_LOCAL_LIMIT = 2  # with RJ_PRESENTATION

# Presentation context results, PS3.8 table 9-18.
PC_ACCEPT, PC_ABSTRACT_UNSUPPORTED, PC_TRANSFER_UNSUPPORTED = 0, 3, 4

_HEADER = struct.Struct(">BxL")
_ITEM = struct.Struct(">BxH")
MAX_PDU_CAP = 64 * 1024 * 1024  # refuse anything larger, whatever the peer claims


class ProtocolError(Exception):
    """The peer sent something that is not valid DICOM Upper Layer protocol."""


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass
class AssociateRequest:
    called_aet: str
    calling_aet: str
    application_context: str = ""
    contexts: list[ProposedContext] = field(default_factory=list)
    max_pdu: int = 0
    implementation_uid: str = ""
    implementation_version: str = ""
    raw_called: bytes = b""  # as sent: echoed in the answer, checked for printable ASCII
    raw_calling: bytes = b""


@dataclass(frozen=True)
class AcceptedContext:
    context_id: int
    result: int
    transfer_syntax: str


def _text(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("ascii", "replace").strip(" \0")


def _items(body: memoryview, start: int) -> list[tuple[int, memoryview]]:
    found, pos = [], start
    while pos < len(body):
        if pos + 4 > len(body):
            raise ProtocolError("truncated item header")
        kind, length = _ITEM.unpack_from(body, pos)
        if pos + 4 + length > len(body):
            raise ProtocolError(f"item 0x{kind:02x} runs past the end of its PDU")
        found.append((kind, body[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return found


def parse_associate_rq(body: memoryview) -> AssociateRequest:
    """Decode the body of an A-ASSOCIATE-RQ (PS3.8 9.3.2)."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ shorter than its fixed fields")
    rq = AssociateRequest(called_aet=_text(body[4:20]), calling_aet=_text(body[20:36]),
                          raw_called=bytes(body[4:20]), raw_calling=bytes(body[20:36]))
    for kind, value in _items(body, 68):
        if kind == 0x10:
            rq.application_context = _text(value)
        elif kind == 0x20:
            if len(value) < 4:
                raise ProtocolError("presentation context item too short")
            abstract, syntaxes = "", []
            for sub, sub_value in _items(value, 4):
                if sub == 0x30:
                    abstract = _text(sub_value)
                elif sub == 0x40:
                    syntaxes.append(_text(sub_value))
            rq.contexts.append(ProposedContext(value[0], abstract, tuple(syntaxes)))
        elif kind == 0x50:
            for sub, sub_value in _items(value, 0):
                if sub == 0x51 and len(sub_value) == 4:
                    rq.max_pdu = struct.unpack(">L", sub_value)[0]
                elif sub == 0x52:
                    rq.implementation_uid = _text(sub_value)
                elif sub == 0x55:
                    rq.implementation_version = _text(sub_value)
    return rq


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return _HEADER.pack(kind, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def _user_info(max_pdu: int, implementation_uid: str, implementation_version: str) -> bytes:
    return _item(0x50, _item(0x51, struct.pack(">L", max_pdu))
                 + _item(0x52, implementation_uid.encode())
                 + _item(0x55, implementation_version.encode()))


def encode_associate_ac(rq: AssociateRequest, contexts: list[AcceptedContext], *, max_pdu: int,
                        implementation_uid: str, implementation_version: str) -> bytes:
    """An A-ASSOCIATE-AC that echoes the request's titles and answers each of its contexts."""
    body = bytearray(struct.pack(">HH", 1, 0) + (rq.raw_called or _ae(rq.called_aet))
                     + (rq.raw_calling or _ae(rq.calling_aet)) + bytes(32))
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for cx in contexts:
        body += _item(0x21, bytes([cx.context_id, 0, cx.result, 0]) + _item(0x40, cx.transfer_syntax.encode()))
    body += _user_info(max_pdu, implementation_uid, implementation_version)
    return _pdu(ASSOCIATE_AC, bytes(body))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(ASSOCIATE_RJ, bytes([0, result, source, reason]))


def encode_release_rq() -> bytes:
    return _pdu(RELEASE_RQ, bytes(4))


def encode_release_rp() -> bytes:
    return _pdu(RELEASE_RP, bytes(4))


def encode_abort(source: int = 2, reason: int = 0) -> bytes:
    return _pdu(ABORT, bytes([0, 0, source, reason]))


def encode_p_data(context_id: int, data: bytes | memoryview, *, command: bool, last: bool = True) -> bytes:
    """One P-DATA-TF with one PDV (the answers are small: one fragment each)."""
    header = (1 if command else 0) | (2 if last else 0)
    pdv = struct.pack(">LBB", len(data) + 2, context_id, header)
    return _HEADER.pack(P_DATA_TF, len(data) + 6) + pdv + bytes(data)


def iter_pdvs(body: memoryview) -> list[tuple[int, int, memoryview]]:
    """Split a P-DATA-TF body into (context id, control header, data) fragments."""
    found, pos = [], 0
    while pos < len(body):
        if pos + 6 > len(body):
            raise ProtocolError("truncated PDV header")
        length = struct.unpack_from(">L", body, pos)[0]
        if length < 2 or pos + 4 + length > len(body):
            raise ProtocolError("PDV length runs past the end of its PDU")
        found.append((body[pos + 4], body[pos + 5], body[pos + 6:pos + 4 + length]))
        pos += 4 + length
    return found


# -- the requesting side (tests, benchmark)
def encode_associate_rq(called_aet: str, calling_aet: str, contexts: list[ProposedContext], *,
                        max_pdu: int = 65536, implementation_uid: str = "1.2.3.4",
                        implementation_version: str = "TESTSCU") -> bytes:
    body = bytearray(struct.pack(">HH", 1, 0) + _ae(called_aet) + _ae(calling_aet) + bytes(32))
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for cx in contexts:
        value = bytes([cx.context_id, 0, 0, 0]) + _item(0x30, cx.abstract_syntax.encode())
        value += b"".join(_item(0x40, ts.encode()) for ts in cx.transfer_syntaxes)
        body += _item(0x20, value)
    body += _user_info(max_pdu, implementation_uid, implementation_version)
    return _pdu(ASSOCIATE_RQ, bytes(body))


def parse_associate_ac(body: memoryview) -> tuple[list[AcceptedContext], int]:
    """(answered contexts, peer's maximum PDU length) from an A-ASSOCIATE-AC body."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-AC shorter than its fixed fields")
    contexts, max_pdu = [], 0
    for kind, value in _items(body, 68):
        if kind == 0x21 and len(value) >= 4:
            syntax = next((_text(v) for sub, v in _items(value, 4) if sub == 0x40), "")
            contexts.append(AcceptedContext(value[0], value[2], syntax))
        elif kind == 0x50:
            for sub, sub_value in _items(value, 0):
                if sub == 0x51 and len(sub_value) == 4:
                    max_pdu = struct.unpack(">L", sub_value)[0]
    return contexts, max_pdu


class PduReader:
    """Reads whole PDUs from a socket with as few ``recv`` calls as it can.

    The returned body is a view into an internal buffer: it is valid until
    the next :meth:`read`, so callers copy what they keep.
    """

    def __init__(self, sock: socket.socket, max_pdu: int = MAX_PDU_CAP, size: int = 1 << 18):
        self._sock = sock
        self._max = min(max_pdu, MAX_PDU_CAP)
        self._buf = bytearray(size)
        self._start = self._end = 0

    def _fill(self, wanted: int) -> None:
        """Make at least ``wanted`` bytes available from ``_start``."""
        if self._start + wanted > len(self._buf):
            # A fresh buffer rather than an in-place move: views handed out earlier stay intact.
            fresh = bytearray(max(len(self._buf), wanted + (1 << 16)))
            fresh[:self._end - self._start] = self._buf[self._start:self._end]
            self._buf, self._end, self._start = fresh, self._end - self._start, 0
        view = memoryview(self._buf)
        while self._end - self._start < wanted:
            got = self._sock.recv_into(view[self._end:])
            if got == 0:
                raise ConnectionResetError("the peer closed the connection")
            self._end += got

    def read(self) -> tuple[int, memoryview]:
        if self._start == self._end:
            self._start = self._end = 0  # empty: reuse the buffer from its start
        self._fill(6)
        kind, length = _HEADER.unpack_from(self._buf, self._start)
        if kind not in (ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT):
            raise ProtocolError(f"unknown PDU type 0x{kind:02x}")
        if length > self._max:
            raise ProtocolError(f"PDU of {length} bytes is larger than the {self._max} allowed")
        self._fill(6 + length)
        body = memoryview(self._buf)[self._start + 6:self._start + 6 + length]
        self._start += 6 + length
        return kind, body
