"""Settings of ``dicom-send``: where derivative DICOM objects go back to.

Destinations are named so that a CI step can say ``--to pacs`` without
repeating addresses; ``sender`` is the reserved name for "return to sender"
(the modality that sent the study, found in its ledger record).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._settings_fields import aet, positive_float, setting

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"^{LABEL}(?:\.{LABEL})*\.?$")  # also matches dotted IPv4
IPV6_RE = re.compile(r"^[0-9A-Fa-f:.]+$")
SENDER = "sender"


@dataclass(frozen=True)
class Destination:
    """A DICOM Storage SCP: a name of ours, its AE title, host and port."""

    name: str
    aet: str
    host: str
    port: int

    @property
    def address(self) -> str:
        """``AET@host:port`` as written in the setting (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"


def dicom_port(raw: str) -> int:
    value = int(raw) if raw.strip().isascii() and raw.strip().isdigit() else 0
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


def host(raw: str) -> str:
    """A host name or IPv4 address, or an IPv6 address with or without brackets."""
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
        if ":" in raw and IPV6_RE.match(raw):
            return raw
    elif HOST_RE.match(raw) and len(raw) <= 253:
        return raw
    raise ValueError(f"{raw!r} is not a host name or IP address")


def _destination(item: str) -> Destination:
    name, sep, rest = item.partition("=")
    name = name.strip()
    if not sep or not NAME_RE.match(name):
        raise ValueError("expected NAME=AET@HOST:PORT with NAME of a-z, 0-9, '_' and '-'")
    if name == SENDER:
        raise ValueError(f"'{SENDER}' is reserved for return-to-sender (set BIDSFLUX_SENDER_PORT)")
    title, at, address = rest.strip().rpartition("@")  # an AE title may itself contain '@'
    where, colon, number = address.rpartition(":")
    if not at or not colon:
        raise ValueError("expected NAME=AET@HOST:PORT")
    try:
        title = aet(title)
    except ValueError as exc:
        raise ValueError(f"AE title {title!r} {exc}") from None
    return Destination(name=name, aet=title, host=host(where), port=dicom_port(number))


def destinations(raw: str) -> dict[str, Destination]:
    """``NAME=AET@HOST:PORT`` items separated by ``;`` or ``,``."""
    result: dict[str, Destination] = {}
    for item in filter(None, (part.strip() for part in re.split(r"[;,]", raw))):
        try:
            found = _destination(item)
        except ValueError as exc:
            raise ValueError(f"destination {item!r}: {exc}") from None
        if found.name in result:
            raise ValueError(f"destination {item!r}: the name {found.name!r} is given twice")
        result[found.name] = found
    return result


@dataclass(frozen=True)
class DestinationSettings:
    dicom_destinations: dict[str, Destination] = field(default_factory=dict, metadata={
        "env": "BIDSFLUX_DICOM_DESTINATIONS", "parse": destinations, "secret": False})
    dicom_send_aet: str = setting("BIDSFLUX_DICOM_SEND_AET", "BIDSFLUX", aet)
    dicom_send_timeout: float = setting("BIDSFLUX_DICOM_SEND_TIMEOUT", 30.0, positive_float)
    sender_port: int | None = setting("BIDSFLUX_SENDER_PORT", None, dicom_port)
