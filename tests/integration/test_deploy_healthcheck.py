"""The indexer image's health check (containers/indexer/healthcheck.py) against a real `bidsflux serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK = ROOT / "containers" / "indexer" / "healthcheck.py"


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=60)


def test_healthy_while_serve_runs_and_unhealthy_once_it_stops(tmp_path: Path) -> None:
    dicom, metrics, forge = free_port(), free_port(), free_port()
    # The container's settings, as BIDSflux_stack.yml gives them (ports chosen free here).
    env = {**os.environ, "BIDSFLUX_WORKDIR": str(tmp_path / "work"), "STORESCP_PORT": str(dicom),
           "STORESCP_HOST": "127.0.0.1", "BIDSFLUX_METRICS_PORT": str(metrics), "BIDSFLUX_METRICS_HOST": "127.0.0.1",
           "BIDSFLUX_FORGE_PORT": str(forge)}
    serve = subprocess.Popen([sys.executable, "-m", "bidsflux", "serve"], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port("127.0.0.1", dicom, timeout=60)
        wait_for_port("127.0.0.1", metrics, timeout=60)
        done = check(env)
        assert done.returncode == 0, done.stderr
        # A DICOM TLS port that is configured but not listening makes it unhealthy.
        tls = check({**env, "BIDSFLUX_TLS_PORT": str(free_port())})
        assert tls.returncode == 1 and "unhealthy" in tls.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
    down = check(env)
    assert down.returncode == 1 and down.stderr.startswith("unhealthy:")
