"""DICOM TLS (PS3.15 B.9, the BCP 195 profile): the server side's SSL context.

Mutual authentication: the endpoint shows its certificate, and a sender
must show one signed by the configured CA, or the handshake fails and the
connection is closed before any DICOM is spoken.  TLS 1.2 is the floor.
"""

from __future__ import annotations

import ssl

from ..errors import ReceiveError
from ._policy import TlsFiles


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(str(files.cert), str(files.key))
    except (OSError, ssl.SSLError) as exc:
        raise ReceiveError(f"cannot load the TLS certificate {files.cert} and key {files.key}: {exc}",
                           hint="check BIDSFLUX_TLS_CERT_FILE and BIDSFLUX_TLS_KEY_FILE (PEM)") from exc
    try:
        context.load_verify_locations(cafile=str(files.ca))
    except (OSError, ssl.SSLError) as exc:
        raise ReceiveError(f"cannot load the TLS CA certificates {files.ca}: {exc}",
                           hint="check BIDSFLUX_TLS_CA_FILE (PEM)") from exc
    return context
