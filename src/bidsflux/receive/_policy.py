"""Who may send, what is accepted, and when to push back: the endpoint's options.

* The allow-list pairs a calling AE title with an address or network; an
  association from anything else is refused and logged with the peer.
* Back-pressure: while the spool's free space is under a threshold, or more
  completed studies wait for indexing than a bound, every new C-STORE is
  answered "out of resources" (0xA700): the scanner keeps the images and
  retries later, and nothing is accepted that could not be kept.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.uid import UID_dictionary

from .._settings_receive import SIEMENS_CSA_NON_IMAGE

if TYPE_CHECKING:
    from ..settings import Settings

VERIFICATION = "1.2.840.10008.1.1"
_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1."
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")


def _storage_classes() -> frozenset[str]:
    """Every storage SOP class the standard defines (retired ones too: old scanners send them)."""
    found = set()
    for uid, (name, kind, *_rest) in UID_dictionary.items():
        if uid.startswith(_STORAGE_ROOT) or (kind == "SOP Class" and "Storage" in name
                                             and "Commitment" not in name and "Directory" not in name):
            found.add(uid)
    return frozenset(found)


def _transfer_syntaxes() -> frozenset[str]:
    """Every standard transfer syntax whose data set encoding is known (all but the XML/MIME ones)."""
    return frozenset(uid for uid, (name, kind, *_rest) in UID_dictionary.items()
                     if kind == "Transfer Syntax" and not uid.startswith("1.2.840.10008.1.2.6."))


STORAGE_CLASSES = _storage_classes()
TRANSFER_SYNTAXES = _transfer_syntaxes()


@dataclass(frozen=True)
class AllowList:
    """Calling AE title + peer address pairs; empty means everyone may send."""

    entries: tuple[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network | None], ...] = ()

    @classmethod
    def parse(cls, pairs: tuple[tuple[str, str], ...]) -> AllowList:
        return cls(tuple((title, None if host == "*" else ipaddress.ip_network(host, strict=False))
                         for title, host in pairs))

    def allows(self, calling_aet: str, address: str) -> bool:
        if not self.entries:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any((title in ("*", calling_aet)) and (net is None or ip in net) for title, net in self.entries)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class EndpointOptions:
    """Everything about the endpoint beside its address; the defaults match the settings' defaults."""

    allow: AllowList = AllowList()
    check_called_aet: bool = True
    plain: bool = True
    tls: TlsFiles | None = None
    tls_port: int | None = None
    extra_sop_classes: frozenset[str] = frozenset({SIEMENS_CSA_NON_IMAGE})
    max_associations: int = 32
    min_free_bytes: int = 2 * 2**30
    max_backlog: int = 100
    stop_grace: float = 30.0
    max_pdu: int = 1 << 20  # what we announce; the reader accepts up to its own cap
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    pressure_interval: float = 0.5
    backlog: Callable[[], int] | None = field(default=None, compare=False)  # default: the spool's

    @classmethod
    def from_settings(cls, settings: Settings) -> EndpointOptions:
        tls = None
        problems = []
        files = (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        if settings.tls_port is not None or any(files):
            names = ("BIDSFLUX_TLS_CERT_FILE", "BIDSFLUX_TLS_KEY_FILE", "BIDSFLUX_TLS_CA_FILE")
            missing = [name for name, value in zip(names, files) if value is None]
            if missing or settings.tls_port is None:
                problems.append("DICOM TLS needs BIDSFLUX_TLS_PORT and " + ", ".join(names) +
                                (f" (missing: {', '.join(missing)})" if missing else " (missing: BIDSFLUX_TLS_PORT)"))
            else:
                tls = TlsFiles(*files)  # type: ignore[arg-type]
        if not settings.plain_dicom and tls is None:
            problems.append("BIDSFLUX_PLAIN_DICOM=false needs DICOM TLS configured")
        if problems:
            from ..errors import ReceiveError

            raise ReceiveError("; ".join(problems), hint="fix the receive settings and start again")
        return cls(allow=AllowList.parse(settings.allowed_peers), check_called_aet=settings.check_called_aet,
                   plain=settings.plain_dicom, tls=tls, tls_port=settings.tls_port,
                   extra_sop_classes=frozenset(settings.extra_sop_classes),
                   max_associations=settings.max_associations, min_free_bytes=settings.spool_min_free,
                   max_backlog=settings.max_backlog, stop_grace=settings.stop_grace)

    def accepts_abstract(self, uid: str) -> bool:
        # Everything under the storage root, so that classes newer than our dictionary are stored too.
        return (uid == VERIFICATION or uid in STORAGE_CLASSES or uid.startswith(_STORAGE_ROOT)
                or uid in self.extra_sop_classes)


class Pressure:
    """Whether to refuse new instances now; re-evaluated at most every ``interval`` seconds."""

    def __init__(self, free_bytes: Callable[[], int], backlog: Callable[[], int], *, min_free: int,
                 max_backlog: int, interval: float = 0.5):
        self._free, self._backlog = free_bytes, backlog
        self.min_free, self.max_backlog, self.interval = min_free, max_backlog, interval
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._reason: str | None = None

    def reason(self) -> str | None:
        """Why new instances are refused right now, or None."""
        now = time.monotonic()
        if now - self._checked < self.interval:
            return self._reason
        with self._lock:
            if now - self._checked >= self.interval:
                self._reason = self._evaluate()
                self._checked = now
        return self._reason

    def _evaluate(self) -> str | None:
        if self.min_free:
            free = self._free()
            if free < self.min_free:
                return f"spool has {free / 1e9:.2f} GB free, under the {self.min_free / 1e9:.2f} GB threshold"
        if self.max_backlog:
            waiting = self._backlog()
            if waiting > self.max_backlog:
                return f"{waiting} studies wait for indexing, over the bound of {self.max_backlog}"
        return None
