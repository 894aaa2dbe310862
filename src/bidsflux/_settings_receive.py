"""Settings of the receive and assemble stages (the DICOM endpoint)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from ._settings_fields import (AET_RE, aet, boolean, non_negative_int, path, port, positive_float, positive_int,
                               setting)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def byte_size(raw: str) -> int:
    """``500MB``, ``2GiB``, ``1073741824``: a number of bytes (0 switches the check off)."""
    match = _SIZE.match(raw)
    if not match:
        raise ValueError("must be a size such as 500MB, 2GiB or a number of bytes")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _UNITS[unit])



def non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def allowed_peers(raw: str) -> tuple[tuple[str, str], ...]:
    """``AET@address``, ``AET@network/bits``, ``*@address``, ``AET@*``, comma or space separated."""
    entries = []
    for item in filter(None, re.split(r"[,\s]+", raw.strip())):
        title, sep, host = item.rpartition("@")
        if not sep or not title or not host:
            raise ValueError(f"{item!r}: expected AET@address, AET@network/bits, *@address or AET@*")
        if title != "*" and not AET_RE.match(title):
            raise ValueError(f"{item!r}: {title!r} is not an AE title (1-16 characters, no backslash)")
        if host != "*":
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ValueError(f"{item!r}: {host!r} is not an IP address or network (names are not "
                                 "resolved, so that a DNS change cannot open the endpoint)") from None
        entries.append((title, host))
    return tuple(entries)


def uid_list(raw: str) -> tuple[str, ...]:
    uids = tuple(filter(None, re.split(r"[,\s]+", raw.strip())))
    bad = [uid for uid in uids if not _UID.match(uid) or len(uid) > 64]
    if bad:
        raise ValueError(f"not DICOM UIDs: {', '.join(bad)}")
    return uids


SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"


@dataclass(frozen=True)
class ReceiveSettings:
    storescp_aet: str = setting("STORESCP_AET", "BIDSFLUX", aet)
    storescp_port: int = setting("STORESCP_PORT", 11112, port)
    storescp_host: str = setting("STORESCP_HOST", "127.0.0.1")
    check_called_aet: bool = setting("BIDSFLUX_CHECK_CALLED_AET", True, boolean)
    allowed_peers: tuple[tuple[str, str], ...] = field(default=(), metadata={
        "env": "BIDSFLUX_ALLOWED_PEERS", "parse": allowed_peers, "secret": False})
    plain_dicom: bool = setting("BIDSFLUX_PLAIN_DICOM", True, boolean)
    tls_port: int | None = setting("BIDSFLUX_TLS_PORT", None, port)
    tls_cert_file: Path | None = setting("BIDSFLUX_TLS_CERT_FILE", None, path)
    tls_key_file: Path | None = setting("BIDSFLUX_TLS_KEY_FILE", None, path)
    tls_ca_file: Path | None = setting("BIDSFLUX_TLS_CA_FILE", None, path)
    extra_sop_classes: tuple[str, ...] = field(default=(SIEMENS_CSA_NON_IMAGE,), metadata={
        "env": "BIDSFLUX_EXTRA_SOP_CLASSES", "parse": uid_list, "secret": False})
    max_associations: int = setting("BIDSFLUX_MAX_ASSOCIATIONS", 32, positive_int)
    spool_min_free: int = setting("BIDSFLUX_SPOOL_MIN_FREE", 2 * 2**30, byte_size)
    max_backlog: int = setting("BIDSFLUX_MAX_BACKLOG", 100, non_negative_int)
    stop_grace: float = setting("BIDSFLUX_STOP_GRACE", 30.0, non_negative_float)
    quiet_period: float = setting("BIDSFLUX_QUIET_PERIOD", 60.0, positive_float)
    association_end_quiet: float = setting("BIDSFLUX_ASSOCIATION_END_QUIET", 10.0, non_negative_float)
    force_complete_after: float = setting("BIDSFLUX_FORCE_COMPLETE_AFTER", 4 * 3600.0, positive_float)
    routing_rules: Path | None = setting("BIDSFLUX_ROUTING_RULES", None, path)
