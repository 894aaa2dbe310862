"""Settings of the receive and assemble stages (the DICOM endpoint)."""

from __future__ import annotations

from dataclasses import dataclass

from ._settings_fields import aet, port, positive_float, setting


@dataclass(frozen=True)
class ReceiveSettings:
    storescp_aet: str = setting("STORESCP_AET", "BIDSFLUX", aet)
    storescp_port: int = setting("STORESCP_PORT", 11112, port)
    storescp_host: str = setting("STORESCP_HOST", "127.0.0.1")
    quiet_period: float = setting("BIDSFLUX_QUIET_PERIOD", 60.0, positive_float)
