"""A Prometheus endpoint computed from the ledger at each scrape.

Nothing is counted in memory: every figure comes from the ledger, so the
numbers survive restarts and agree with ``bidsflux status``.  Exposed:
studies per state, age of the oldest study per state, instances and bytes
received, how long studies spent in each stage (a summary from the
transitions), and the routed derivatives of merged studies per outcome (a
failed derivative leaves its study MERGED, so alert on this too).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import BidsfluxError
from .ledger import Ledger, State


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(ledger: Ledger, now: float | None = None) -> str:
    """The metrics in Prometheus' text exposition format."""
    now = time.time() if now is None else now
    records = ledger.studies()
    per_state: dict[str, int] = {str(state): 0 for state in State}
    oldest: dict[str, float] = {}
    instances = nbytes = 0
    derivatives: dict[str, int] = {"pending": 0, "success": 0, "failed": 0}
    for record in records:
        state = str(record.state)
        per_state[state] += 1
        routed = record.details.get("derivatives")
        for entry in (routed.values() if isinstance(routed, dict) else ()):
            if isinstance(entry, dict):
                status = str(entry.get("status", "?"))
                derivatives[status] = derivatives.get(status, 0) + 1
        oldest[state] = max(oldest.get(state, 0.0), now - record.updated_at)
        instances += record.instances
        nbytes += record.bytes
    durations: dict[str, list[float]] = defaultdict(list)
    for record in records:
        previous = None
        for transition in ledger.transitions(record.study_uid):
            if previous is not None and transition.to_state != previous.to_state:
                durations[str(transition.to_state)].append(transition.at - previous.at)
            previous = transition
    lines = [
        "# HELP bidsflux_studies Studies in each state.",
        "# TYPE bidsflux_studies gauge",
        *(f'bidsflux_studies{{state="{s}"}} {n}' for s, n in sorted(per_state.items())),
        "# HELP bidsflux_oldest_study_age_seconds Time since the oldest study in each state last moved.",
        "# TYPE bidsflux_oldest_study_age_seconds gauge",
        *(f'bidsflux_oldest_study_age_seconds{{state="{s}"}} {age:.3f}' for s, age in sorted(oldest.items())),
        "# HELP bidsflux_received_instances_total DICOM instances received, over all studies.",
        "# TYPE bidsflux_received_instances_total counter",
        f"bidsflux_received_instances_total {instances}",
        "# HELP bidsflux_received_bytes_total Bytes received, over all studies.",
        "# TYPE bidsflux_received_bytes_total counter",
        f"bidsflux_received_bytes_total {nbytes}",
        "# HELP bidsflux_derivatives Routed derivatives of the studies, by outcome.",
        "# TYPE bidsflux_derivatives gauge",
        *(f'bidsflux_derivatives{{status="{_escape(s)}"}} {n}' for s, n in sorted(derivatives.items())),
        "# HELP bidsflux_stage_duration_seconds Time from the previous state to reaching this one.",
        "# TYPE bidsflux_stage_duration_seconds summary",
    ]
    for state, values in sorted(durations.items()):
        label = _escape(state)
        lines.append(f'bidsflux_stage_duration_seconds_count{{state="{label}"}} {len(values)}')
        lines.append(f'bidsflux_stage_duration_seconds_sum{{state="{label}"}} {sum(values):.3f}')
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404)
            return
        body = render(self.server.ledger).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class MetricsServer:
    """Serves ``/metrics`` on its own thread."""

    def __init__(self, ledger: Ledger, host: str, port: int):
        try:
            self._httpd = ThreadingHTTPServer((host, port), _Handler)
        except OSError as exc:
            raise BidsfluxError(f"cannot serve metrics on {host}:{port}: {exc.strerror}",
                                hint="pick a free port with BIDSFLUX_METRICS_PORT") from exc
        self._httpd.daemon_threads = True
        self._httpd.ledger = ledger  # type: ignore[attr-defined]
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
