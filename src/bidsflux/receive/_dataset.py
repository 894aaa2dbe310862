"""The few identifying tags of a received data set, read without decoding it.

The endpoint files each instance under its Study and Series Instance UIDs,
which sit near the start of the data set (groups 0008 and 0020), long before
the pixel data.  This walks the element headers up to (0020,000E), skipping
values and nested sequences by their lengths, in any of the data set
encodings: implicit or explicit VR, little or big endian, deflated.  The
bytes themselves are never changed: what was received is what is stored.

A walk that runs off the end of the bytes it was given raises
:class:`NeedMore` (the caller may have more); anything malformed raises
:class:`HeaderError` with a reason fit for the ledger.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPIP_DEFLATE = "1.2.840.10008.1.2.4.95"
JPIP_HTJ2K_DEFLATE = "1.2.840.10008.1.2.4.205"

_WANTED = {
    0x00080005: "charset", 0x00080016: "sop_class", 0x00080018: "sop_instance",
    0x00080060: "modality", 0x0008103E: "series_description",
    0x0020000D: "study", 0x0020000E: "series",
}
_LAST = 0x0020000E
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_SHORT_VRS = frozenset(vr.encode() for vr in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT",
                                               "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"))
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 24
_MAX_VALUE = 1024  # longer wanted values are not UIDs or descriptions worth keeping


class HeaderError(Exception):
    """The data set's identifying tags cannot be read; the message says why."""


class NeedMore(HeaderError):
    """The bytes given end before the identifying tags: give more, if there are more."""


@dataclass(frozen=True)
class Header:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str = ""
    series_description: str = ""


def _structs(little: bool) -> tuple[struct.Struct, struct.Struct, struct.Struct]:
    end = "<" if little else ">"
    return struct.Struct(end + "HH"), struct.Struct(end + "H"), struct.Struct(end + "L")


class _Walker:
    def __init__(self, data: bytes | memoryview, explicit: bool, little: bool, complete: bool):
        self.data, self.explicit, self.complete = data, explicit, complete
        self.tag, self.short, self.long = _structs(little)
        self.found: dict[str, bytes] = {}

    def need(self, end: int) -> None:
        if end > len(self.data):
            raise HeaderError("the data set is truncated") if self.complete else NeedMore("need more bytes")

    def element(self, pos: int, explicit: bool) -> tuple[int, int, int, bytes]:
        """(tag, value offset, value length, VR or b"" when implicit) of the element at ``pos``."""
        self.need(pos + 8)
        group, elem = self.tag.unpack_from(self.data, pos)
        tag = group << 16 | elem
        if tag in (_ITEM, _ITEM_END, _SEQ_END) or not explicit:
            return tag, pos + 8, self.long.unpack_from(self.data, pos + 4)[0], b""
        vr = bytes(self.data[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            self.need(pos + 12)
            return tag, pos + 12, self.long.unpack_from(self.data, pos + 8)[0], vr
        if vr not in _SHORT_VRS:
            raise HeaderError(f"element ({group:04X},{elem:04X}) has no valid VR ({vr!r})")
        return tag, pos + 8, self.short.unpack_from(self.data, pos + 6)[0], vr

    def skip_sequence(self, pos: int, explicit: bool, depth: int) -> int:
        """Skip items up to and including the sequence delimiter; return the position after it."""
        if depth > _MAX_DEPTH:
            raise HeaderError("sequences nested too deeply")
        while True:
            tag, start, length, _ = self.element(pos, False)
            if tag == _SEQ_END:
                return start
            if tag != _ITEM:
                raise HeaderError(f"expected an item in a sequence, found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            pos = self.skip_dataset(start, explicit, depth + 1) if length == _UNDEFINED else start + length

    def skip_dataset(self, pos: int, explicit: bool, depth: int) -> int:
        """Skip the elements of an undefined-length item up to and including its delimiter."""
        while True:
            tag, start, length, vr = self.element(pos, explicit)
            if tag == _ITEM_END:
                return start
            pos = self._skip_value(start, length, vr, explicit, depth)

    def _skip_value(self, start: int, length: int, vr: bytes, explicit: bool, depth: int) -> int:
        if length != _UNDEFINED:
            return start + length
        # Undefined length: a sequence of items.  Inside UN they are implicit VR (PS3.5 6.2.2).
        return self.skip_sequence(start, explicit and vr != b"UN", depth + 1)

    def walk(self) -> None:
        pos, explicit = 0, self.explicit
        if explicit and len(self.data) >= 6 and not bytes(self.data[4:6]).isalpha():
            explicit = False  # mislabelled implicit data, as pydicom and dcmtk also accept
        while pos < len(self.data):
            tag, start, length, vr = self.element(pos, explicit)
            if tag > _LAST:
                return
            name = _WANTED.get(tag)
            if name is not None and length != _UNDEFINED:
                self.need(start + min(length, _MAX_VALUE))
                self.found[name] = bytes(self.data[start:start + min(length, _MAX_VALUE)])
            if tag == _LAST:
                return
            pos = self._skip_value(start, length, vr, explicit, 0)
        if not self.complete:
            raise NeedMore("need more bytes")


def _text(raw: bytes | None, charset: bytes | None = None) -> str:
    if not raw:
        return ""
    codec = "utf-8" if charset and b"192" in charset else "latin-1" if charset else "ascii"
    return raw.decode(codec, "replace").rstrip("\0 ").lstrip(" ")


def inflate_prefix(data: bytes | memoryview, limit: int) -> bytes:
    """The first ``limit`` bytes of a deflated data set (raw deflate, PS3.5 A.5)."""
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(bytes(data), limit)
    except zlib.error as exc:
        raise HeaderError(f"the deflated data set cannot be inflated: {exc}") from None


def read_header(data: bytes | memoryview, transfer_syntax: str, *, complete: bool) -> Header:
    """The identifying tags of a data set encoded in ``transfer_syntax``.

    ``complete`` says whether ``data`` is the whole data set; if not, running
    off its end raises :class:`NeedMore` instead of reporting truncation.
    """
    if transfer_syntax in (DEFLATED, JPIP_DEFLATE, JPIP_HTJ2K_DEFLATE):
        inflated = inflate_prefix(data, 4 * 1024 * 1024)
        # A short inflation of a complete stream is the whole data set.
        complete = complete or len(inflated) < 4 * 1024 * 1024
        data = inflated
    walker = _Walker(data, transfer_syntax != IMPLICIT_LE, transfer_syntax != EXPLICIT_BE, complete)
    walker.walk()
    found = walker.found
    missing = [label for key, label in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"),
                                        ("sop_instance", "SOPInstanceUID")) if not found.get(key)]
    if missing:
        raise HeaderError(f"the data set has no {', '.join(missing)}")
    charset = found.get("charset")
    return Header(
        study_uid=_text(found["study"]), series_uid=_text(found["series"]),
        sop_instance_uid=_text(found["sop_instance"]), sop_class_uid=_text(found.get("sop_class")),
        modality=_text(found.get("modality"), charset),
        series_description=_text(found.get("series_description"), charset),
    )
