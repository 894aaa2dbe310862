"""kill -9 at each durable step of indexing, then restart: nothing lost, nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bidsflux.ledger import Ledger, State
from bidsflux.scanner import StudySpec, study_uid

from ..batches import make_batch
from ..conftest import free_port


def _serve(workdir: Path, forge_port: int, crash_at: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BIDSFLUX_FORGE_PORT": str(forge_port), "BIDSFLUX_QUIET_PERIOD": "1"}
    env.pop("BIDSFLUX_CRASH_AT", None)
    if crash_at:
        env["BIDSFLUX_CRASH_AT"] = crash_at
    return subprocess.Popen([sys.executable, "-m", "bidsflux", "serve", "--no-endpoint", "--workdir", str(workdir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_state(ledger_path: Path, uid: str, states: set[State], timeout: float = 300) -> State:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger_path.exists():
            ledger = Ledger(ledger_path)
            record = ledger.get(uid)
            ledger.close()
            if record is not None and record.state in states:
                return record.state
        time.sleep(0.3)
    raise TimeoutError(f"{uid} did not reach {states}")


@pytest.mark.parametrize("crash_at", ["index.after_archive", "index.after_commit", "worker.before_indexed"])
def test_kill_during_indexing_then_restart(tmp_path: Path, crash_at: str) -> None:
    workdir = tmp_path / "work"
    spec = StudySpec(seed=21)
    uid = study_uid(spec)
    batch = make_batch(workdir / "spool", spec, tmp_path / "dicoms")
    received = len(list(batch.rglob("*.dcm")))
    Ledger(workdir / "ledger.sqlite").transition(uid, State.COMPLETE, counts={"instances": received})
    port = free_port()

    crashed = _serve(workdir, port, crash_at)
    assert crashed.wait(timeout=300) == -signal.SIGKILL, crashed.stderr.read().decode()[-2000:] if crashed.stderr else ""

    service = _serve(workdir, port)
    try:
        final = _wait_state(workdir / "ledger.sqlite", uid, {State.MERGED, State.FAILED, State.QUARANTINED})
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=120)
    ledger = Ledger(workdir / "ledger.sqlite")
    record = ledger.require(uid)
    assert final is State.MERGED, record.error
    dataset = Path(record.details["dataset"])
    subjects = subprocess.run(["git", "log", "--format=%s"], cwd=dataset, capture_output=True, text=True,
                              check=True).stdout.splitlines()
    assert sum(s.startswith("[bids-flux] Index session") for s in subjects) == 1
    assert not any(s.startswith("[bids-flux] Amend session") for s in subjects)
    assert json.loads((dataset / "manifest.json").read_text())["instances"] == received
    assert subprocess.run(["git", "status", "--porcelain"], cwd=dataset, capture_output=True,
                          text=True).stdout == ""
    # Everything received was archived and the spool holds nothing of it any more.
    assert not list((workdir / "spool").glob(f"*/{uid}@*"))
    indexed = [t for t in ledger.transitions(uid) if t.to_state is State.INDEXED]
    assert len(indexed) == 1 and indexed[0].counts["instances"] == received
