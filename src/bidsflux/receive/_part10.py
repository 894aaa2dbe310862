"""DICOM Part 10 files: the File Meta Information written before a received data set, and read back.

A received data set is stored as the sender encoded it; only the 128-byte
preamble, ``DICM`` and the group 0002 elements are added in front, built
from the C-STORE request and the negotiated transfer syntax (PS3.10 7.1).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from .. import __version__

IMPLEMENTATION_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'bids-flux/receive').int}"
IMPLEMENTATION_VERSION = f"BIDSFLUX_{__version__}"[:16]
PREAMBLE = bytes(128) + b"DICM"

_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xL")
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    return _SHORT.pack(0x0002, element, vr, len(value)) + value


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_aet: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information for one received instance."""
    body = _LONG.pack(0x0002, 0x0001, b"OB", 2) + b"\x00\x01"
    body += _short(0x0002, b"UI", _pad(sop_class_uid.encode("ascii"), b"\0"))
    body += _short(0x0003, b"UI", _pad(sop_instance_uid.encode("ascii"), b"\0"))
    body += _short(0x0010, b"UI", _pad(transfer_syntax.encode("ascii"), b"\0"))
    body += _short(0x0012, b"UI", _pad(IMPLEMENTATION_UID.encode("ascii"), b"\0"))
    body += _short(0x0013, b"SH", _pad(IMPLEMENTATION_VERSION.encode("ascii"), b" "))
    if source_aet:
        body += _short(0x0016, b"AE", _pad(source_aet.encode("ascii", "replace"), b" "))
    return PREAMBLE + _short(0x0000, b"UL", struct.pack("<L", len(body))) + body


@dataclass(frozen=True)
class Part10:
    """What a Part 10 file's meta says, and where its data set starts."""

    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    data_offset: int
    source_aet: str = ""  # (0002,0016): the calling AE title, as receivers such as storescp record it


class NotPart10(Exception):
    """Not a DICOM Part 10 file (no preamble and ``DICM``, or a broken meta group)."""


def read_part10(head: bytes) -> Part10:
    """Parse the File Meta Information at the start of ``head`` (the first bytes of a file)."""
    if head[128:132] != b"DICM":
        raise NotPart10("no DICOM preamble")
    pos, values = 132, {}
    while pos + 8 <= len(head):
        group, element, vr, short_length = _SHORT.unpack_from(head, pos)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                raise NotPart10("truncated file meta information")
            length, start = struct.unpack_from("<L", head, pos + 8)[0], pos + 12
        else:
            length, start = short_length, pos + 8
        if start + length > len(head):
            raise NotPart10("file meta information runs past the end of the file")
        values[element] = head[start:start + length].decode("ascii", "replace").rstrip("\0 ")
        pos = start + length
    if not values.get(0x0010):
        raise NotPart10("file meta information without a transfer syntax")
    return Part10(values[0x0010], values.get(0x0002, ""), values.get(0x0003, ""), pos, values.get(0x0016, ""))
