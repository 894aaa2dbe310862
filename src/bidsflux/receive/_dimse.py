"""DIMSE command sets (PS3.7 section 9 and annex E): decoding requests, encoding responses.

Command sets are always Implicit VR Little Endian group 0000 elements, a
few hundred bytes; decoding them by hand keeps the per-instance cost of the
endpoint to a handful of ``struct`` calls.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101
VERIFICATION = "1.2.840.10008.1.1"

# C-STORE statuses (PS3.4 B.2.3), C-ECHO success, and the generic "unrecognised operation".
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATA_SET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
UNRECOGNIZED_OPERATION = 0x0211

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")


class CommandError(Exception):
    """A command set that cannot be decoded."""


@dataclass(frozen=True)
class Command:
    field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_data_set: bool


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\0 ")


def parse_command(data: bytes) -> Command:
    """Decode the elements a Storage SCP needs from a command set."""
    values: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise CommandError("truncated command element header")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        if group != 0x0000 or pos + 8 + length > len(data):
            raise CommandError(f"bad command element ({group:04x},{element:04x})")
        values[element] = data[pos + 8:pos + 8 + length]
        pos += 8 + length

    def us(element: int, default: int | None = None) -> int:
        raw = values.get(element)
        if raw is None or len(raw) != 2:
            if default is None:
                raise CommandError(f"command element (0000,{element:04x}) missing or not US")
            return default
        return int(_US.unpack(raw)[0])

    # MessageID is 0x0110 in requests; responses never reach an SCP.
    return Command(
        field=us(0x0100),
        message_id=us(0x0110, 0),
        sop_class_uid=_uid(values.get(0x0002, b"")),
        sop_instance_uid=_uid(values.get(0x1000, b"")),
        has_data_set=us(0x0800, NO_DATA_SET) != NO_DATA_SET,
    )


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, element, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    return raw + b"\0" if len(raw) % 2 else raw


def _text_value(text: str) -> bytes:
    raw = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch != "\\" else "?" for ch in text)[:64].encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def encode_response(request: Command, status: int, *, response_field: int | None = None,
                    comment: str | None = None) -> bytes:
    """The response command set to ``request`` (no data set), in tag order."""
    field = response_field if response_field is not None else request.field | 0x8000
    body = b""
    if request.sop_class_uid:
        body += _element(0x0002, _uid_value(request.sop_class_uid))
    body += _element(0x0100, _US.pack(field))
    body += _element(0x0120, _US.pack(request.message_id))
    body += _element(0x0800, _US.pack(NO_DATA_SET))
    body += _element(0x0900, _US.pack(status))
    if comment and status not in (SUCCESS,):
        body += _element(0x0902, _text_value(comment))  # ErrorComment: why, for the sender's log
    if request.sop_instance_uid:
        body += _element(0x1000, _uid_value(request.sop_instance_uid))
    return _element(0x0000, struct.pack("<L", len(body))) + body


def encode_request(field: int, message_id: int, sop_class_uid: str, sop_instance_uid: str, *,
                   has_data_set: bool) -> bytes:
    """A request command set (tests and the benchmark send these)."""
    body = _element(0x0002, _uid_value(sop_class_uid))
    body += _element(0x0100, _US.pack(field))
    body += _element(0x0110, _US.pack(message_id))
    if field == C_STORE_RQ:
        body += _element(0x0700, _US.pack(0))  # priority: medium
    body += _element(0x0800, _US.pack(0x0000 if has_data_set else NO_DATA_SET))
    if sop_instance_uid:
        body += _element(0x1000, _uid_value(sop_instance_uid))
    return _element(0x0000, struct.pack("<L", len(body))) + body


def parse_status(data: bytes) -> int:
    """The Status (0000,0900) of a response command set."""
    pos = 0
    while pos + 8 <= len(data):
        _, element, length = _ELEMENT.unpack_from(data, pos)
        if element == 0x0900 and length == 2:
            return int(_US.unpack_from(data, pos + 8)[0])
        pos += 8 + length
    raise CommandError("response without a status")
