#!/usr/bin/env python3
"""Health check of the bids-flux endpoint/indexer container.

Healthy when the metrics endpoint answers (the worker's process is alive and
reads its ledger) and each DICOM port it should listen on (plain, TLS) accepts
a connection. Ports come from the container's settings; exit 0 when healthy,
1 with one line on stderr when not.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def _on(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value in {"1", "true", "yes", "on"}


def main() -> int:
    metrics = int(os.environ.get("BIDSFLUX_METRICS_PORT") or 0)
    ports = []
    if _on("BIDSFLUX_PLAIN_DICOM", True):
        ports.append(int(os.environ.get("STORESCP_PORT") or 11112))
    if os.environ.get("BIDSFLUX_TLS_PORT"):
        ports.append(int(os.environ["BIDSFLUX_TLS_PORT"]))
    try:
        if metrics:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as answer:
                if answer.status != 200:
                    raise OSError(f"metrics answered {answer.status}")
        for port in ports:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
