"""Hostile senders: the endpoint survives, writes nothing outside the spool, and the ledger says why."""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from bidsflux.assemble import Assembler
from bidsflux.ledger import Ledger, State
from bidsflux.naming import is_uid
from bidsflux.receive import Endpoint, EndpointOptions, Spool
from bidsflux.receive import _dimse as dimse
from bidsflux.receive import _wire as wire

from .test_receive_client import RawScu, encode, small_dataset

STUDY, SERIES = "1.2.826.0.1.42", "1.2.826.0.1.42.1"
HOSTILE = ["../../etc", "/", "1.2/../../x", "1.2;rm -rf /", "1.2\0.3", "1" * 65536, "$(reboot)", "1.2\n3"]


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def world(tmp_path: Path):
    (tmp_path / "outside.txt").write_text("must stay as it is")
    spool = Spool(tmp_path / "spool", journal_segment_bytes=1 << 22, journal_spare=0)
    endpoint = Endpoint(spool, aet="BIDSFLUX", host="127.0.0.1", port=0, options=EndpointOptions(min_free_bytes=0))
    before = _tree(tmp_path)
    yield tmp_path, endpoint
    endpoint.stop(grace=2)
    after = {k: v for k, v in _tree(tmp_path).items() if not k.startswith("spool")}
    assert after == {k: v for k, v in before.items() if not k.startswith("spool")}  # nothing outside the spool
    for path in (tmp_path / "spool" / "incoming").rglob("*"):
        assert all(is_uid(part) or part.endswith(".dcm") and is_uid(part[:-4])
                   for part in path.relative_to(tmp_path / "spool" / "incoming").parts)


def _scu(endpoint: Endpoint) -> RawScu:
    scu = RawScu("127.0.0.1", endpoint.port, max_pdu=65536)
    assert scu.associate()[0] == wire.ASSOCIATE_AC
    return scu


def test_hostile_values_garbage_and_truncation_are_answered_and_recorded(world) -> None:
    root, endpoint = world
    scu = _scu(endpoint)
    statuses = []
    for n, value in enumerate(HOSTILE):  # hostile Study and Series UIDs
        ds = small_dataset(value, SERIES if n % 2 else value, f"1.2.826.0.1.42.9.{n}")
        statuses.append(scu.store_dataset(ds))
    good = small_dataset(STUDY, SERIES, "1.2.826.0.1.42.1.1", PatientName="\xe9\xff" * 20000,
                         SeriesDescription="../../" + "x" * 60000, InstitutionName="a\0b; `id`")
    statuses.append(scu.store_dataset(good))  # hostile values elsewhere: filed, never used as a name
    raw = encode(small_dataset(STUDY, SERIES, "1.2.826.0.1.42.1.2"), ExplicitVRLittleEndian)
    statuses.append(scu.store(raw[:50], MRImageStorage, "1.2.826.0.1.42.1.2"))  # truncated
    statuses.append(scu.store(bytes(random.Random(7).randbytes(3000)), MRImageStorage, "1.2.826.0.1.42.1.3"))
    wrong_vr = raw.replace(b"UI", b"ZZ", 1)
    statuses.append(scu.store(wrong_vr, MRImageStorage, "1.2.826.0.1.42.1.2"))
    statuses.append(scu.store(raw, MRImageStorage, "../../1.2.3"))  # hostile UID in the command
    statuses.append(scu.store(raw, MRImageStorage, "1.2.826.0.1.42.1.99"))  # not the data set's UID
    assert scu.echo() == 0 and scu.release() == wire.RELEASE_RP  # still talking after all that
    assert statuses[len(HOSTILE)] == dimse.SUCCESS
    assert all(s in (dimse.CANNOT_UNDERSTAND, dimse.DATA_SET_MISMATCH) for s in statuses if s != dimse.SUCCESS)
    assert statuses.count(dimse.SUCCESS) == 1
    assert statuses[-1] == dimse.DATA_SET_MISMATCH

    ledger = Ledger(root / "spool-ledger" / "ledger.sqlite")
    Assembler(endpoint.spool, endpoint.state, ledger, 60).tick()
    rejected = ledger.studies([State.QUARANTINED])
    reasons = " | ".join(r.error or "" for r in rejected)
    assert len(rejected) == len(statuses) - 1
    for phrase in ("is not a valid DICOM UID", "truncated", "no valid VR", "differ from the request's",
                   "the C-STORE request's SOP UIDs are not valid"):
        assert phrase in reasons
    assert all(r.calling_aet == "RAWSCU" and r.peer and r.details["kept_at"] for r in rejected)
    ledger.close()


def test_protocol_violations_abort_one_association_not_the_endpoint(world) -> None:
    _, endpoint = world
    attacks = [
        lambda s: s.sock.sendall(wire.encode_p_data(7, b"\0" * 10, command=True)),  # context never accepted
        lambda s: s.sock.sendall(b"\x04\x00\x7f\xff\xff\xff"),  # a 2 GiB PDU
        lambda s: s.sock.sendall(b"\x99\x00\x00\x00\x00\x00"),  # no such PDU type
        lambda s: s.sock.sendall(wire.encode_p_data(1, b"\x01\x02", command=True)),  # a broken command
        lambda s: s.sock.sendall(wire.encode_p_data(1, b"data first", command=False)),  # data without a command
        lambda s: s.sock.sendall(struct.pack(">BxL", 4, 3) + b"abc"),  # a PDV shorter than its header
    ]
    for attack in attacks:
        scu = _scu(endpoint)
        attack(scu)
        kind, _ = scu.reader.read()
        assert kind == wire.ABORT
        scu.close()
    # A connection that says nothing, and one that closes in the middle of an instance.
    silent = socket.create_connection(("127.0.0.1", endpoint.port))
    scu = _scu(endpoint)
    scu._send_message(1, dimse.encode_request(dimse.C_STORE_RQ, 1, MRImageStorage, "1.2.3", has_data_set=True), None)
    scu.sock.sendall(wire.encode_p_data(1, b"\x08\x00", command=False, last=False))
    scu.close()
    silent.close()
    healthy = _scu(endpoint)
    assert healthy.store_dataset(small_dataset(STUDY, SERIES, "1.2.826.0.1.42.1.1")) == dimse.SUCCESS
    healthy.release()
    assert list((endpoint.spool.root / "tmp").iterdir()) == []  # the half instance left nothing behind


def test_random_bytes_never_take_the_endpoint_down(world) -> None:
    _, endpoint = world
    rng = random.Random(2024)
    for _ in range(40):
        scu = RawScu("127.0.0.1", endpoint.port, timeout=5)
        try:
            if rng.random() < 0.5:
                scu.sock.sendall(rng.randbytes(rng.randint(1, 4000)))
            else:
                scu.associate()
                scu.sock.sendall(bytes([4, 0]) + struct.pack(">L", 300) + rng.randbytes(300))
            scu.sock.shutdown(socket.SHUT_WR)
            scu.sock.recv(65536)
        except OSError:
            pass
        finally:
            scu.close()
    scu = _scu(endpoint)
    assert scu.echo() == 0
    scu.release()
