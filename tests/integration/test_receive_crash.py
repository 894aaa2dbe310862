"""`bidsflux serve` killed with -9 in the middle of a transfer, and stopped with SIGTERM during one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from bidsflux.receive import read_part10
from bidsflux.receive import _wire as wire

from ..conftest import free_port, wait_for_port
from .test_receive_client import RawScu, encode, small_dataset

STUDY = "1.2.826.0.1.99"


def _serve(workdir: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "BIDSFLUX_FORGE_PORT": "0", "BIDSFLUX_QUIET_PERIOD": "3600",
                   "BIDSFLUX_SPOOL_MIN_FREE": "0", **env}
    process = subprocess.Popen([sys.executable, "-m", "bidsflux", "serve", "--workdir", str(workdir),
                                "--port", str(port)], env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
    except TimeoutError:
        process.kill()
        raise
    return process


@pytest.fixture
def started():
    """Every serve a test starts is ended, by its PID, whatever the test's outcome."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _instances(count: int) -> list[tuple[str, bytes]]:
    made = []
    for n in range(count):
        ds = small_dataset(STUDY, f"{STUDY}.{n % 3}", f"{STUDY}.{n % 3}.{n}")
        ds.add_new(0x7FE00010, "OB", os.urandom(200_000))  # big enough for a kill to land mid-instance
        made.append((ds.SOPInstanceUID, encode(ds, ExplicitVRLittleEndian)))
    return made


def _kept(workdir: Path) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for folder in ("incoming", "complete", "conflicts"):
        for path in (workdir / "spool" / folder).rglob("*.dcm"):
            raw = path.read_bytes()
            meta = read_part10(raw[:65536])
            found.setdefault(meta.sop_instance_uid, []).append(raw[meta.data_offset:])
    return found


def _send(port: int, instances: list[tuple[str, bytes]], acknowledged: list[str]) -> None:
    scu = RawScu("127.0.0.1", port, max_pdu=65536)
    assert scu.associate()[0] == wire.ASSOCIATE_AC
    try:
        for sop, data in instances:
            if scu.store(data, "1.2.840.10008.5.1.4.1.1.4", sop) == 0:
                acknowledged.append(sop)
        scu.release()
    finally:
        scu.close()


def test_kill_9_during_a_transfer_then_restart(tmp_path: Path, started: list) -> None:
    workdir, port = tmp_path / "work", free_port()
    instances = _instances(400)
    sent = dict(instances)
    service = _serve(workdir, port)
    started.append(service)
    acknowledged: list[str] = []

    def kill_soon() -> None:
        while len(acknowledged) < 60:
            time.sleep(0.001)
        service.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    with pytest.raises((OSError, ConnectionError)):
        _send(port, instances, acknowledged)
    killer.join()
    assert service.wait(timeout=30) == -signal.SIGKILL
    assert 60 <= len(acknowledged) < len(instances)

    restarted = _serve(workdir, port)
    started.append(restarted)
    try:
        kept = _kept(workdir)
        for sop in acknowledged:  # every acknowledged instance is in its study, whole, once
            assert kept.get(sop) == [sent[sop]], sop
        assert not list((workdir / "spool" / "tmp").glob("recv-*"))
        # The scanner sends the study again: identical resends change nothing.
        again: list[str] = []
        _send(port, instances, again)
        assert len(again) == len(instances)
        kept = _kept(workdir)
        assert kept == {sop: [data] for sop, data in instances}
        assert not list((workdir / "spool" / "conflicts").rglob("*.dcm"))
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=120) == 0


def test_sigterm_lets_open_associations_finish_and_refuses_new_ones(tmp_path: Path, started: list) -> None:
    workdir, port = tmp_path / "work", free_port()
    service = _serve(workdir, port)
    started.append(service)
    instances = _instances(6)
    scu = RawScu("127.0.0.1", port, max_pdu=65536)
    try:
        assert scu.associate()[0] == wire.ASSOCIATE_AC
        assert scu.store(instances[0][1], "1.2.840.10008.5.1.4.1.1.4", instances[0][0]) == 0
        service.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the listening socket closes...
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.05)
            except OSError:
                break
        else:
            pytest.fail("still accepting associations after SIGTERM")
        for sop, data in instances[1:]:  # ...while the open association is served to its end
            assert scu.store(data, "1.2.840.10008.5.1.4.1.1.4", sop) == 0
        assert scu.release() == wire.RELEASE_RP
    finally:
        scu.close()
    assert service.wait(timeout=120) == 0
    assert set(_kept(workdir)) == {sop for sop, _ in instances}
    assert pydicom.dcmread(next((workdir / "spool" / "incoming").rglob("*.dcm"))).StudyInstanceUID == STUDY
