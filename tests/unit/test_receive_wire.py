"""The endpoint's PDU and DIMSE codecs: round trips, and lying or truncated input."""

from __future__ import annotations

import socket
import struct

import pytest

from bidsflux.receive import _dimse as dimse
from bidsflux.receive import _wire as wire

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


def test_associate_request_round_trip() -> None:
    proposed = [wire.ProposedContext(1, MR, (EXPLICIT, "1.2.840.10008.1.2")), wire.ProposedContext(3, "1.2.3", ())]
    pdu = wire.encode_associate_rq("BIDSFLUX", "SCANNER", proposed, max_pdu=32768)
    assert pdu[0] == wire.ASSOCIATE_RQ
    rq = wire.parse_associate_rq(memoryview(pdu)[6:])
    assert (rq.called_aet, rq.calling_aet, rq.max_pdu) == ("BIDSFLUX", "SCANNER", 32768)
    assert rq.application_context == wire.APPLICATION_CONTEXT
    assert rq.contexts == proposed
    assert rq.raw_calling == b"SCANNER".ljust(16)


def test_accept_echoes_titles_and_answers_each_context() -> None:
    rq = wire.parse_associate_rq(memoryview(wire.encode_associate_rq(
        "BIDSFLUX", "SCANNER", [wire.ProposedContext(1, MR, (EXPLICIT,))]))[6:])
    answers = [wire.AcceptedContext(1, wire.PC_ACCEPT, EXPLICIT), wire.AcceptedContext(3, 3, EXPLICIT)]
    pdu = wire.encode_associate_ac(rq, answers, max_pdu=1 << 20, implementation_uid="1.2.3",
                                   implementation_version="X")
    assert pdu[0] == wire.ASSOCIATE_AC and pdu[10:26] == b"BIDSFLUX".ljust(16)
    contexts, max_pdu = wire.parse_associate_ac(memoryview(pdu)[6:])
    assert contexts == answers and max_pdu == 1 << 20


@pytest.mark.parametrize("body", [
    b"", b"\x00" * 67,  # shorter than the fixed fields
    b"\x00\x01\x00\x00" + b" " * 64 + b"\x20\x00\x00\x10",  # item claims more than is there
    b"\x00\x01\x00\x00" + b" " * 64 + b"\x20\x00\x00\x02\x01\x00",  # context item too short
])
def test_malformed_requests_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse_associate_rq(memoryview(body))


def test_pdvs_split_and_lying_lengths() -> None:
    pdu = wire.encode_p_data(5, b"abc", command=True) + wire.encode_p_data(5, b"xy", command=False, last=False)
    first = wire.iter_pdvs(memoryview(pdu)[6:6 + 9])
    assert [(c, h, bytes(d)) for c, h, d in first] == [(5, 3, b"abc")]
    with pytest.raises(wire.ProtocolError):
        wire.iter_pdvs(memoryview(struct.pack(">LBB", 100, 1, 3) + b"short"))
    with pytest.raises(wire.ProtocolError):
        wire.iter_pdvs(memoryview(struct.pack(">LBB", 1, 1, 3)))


def test_reader_reassembles_pdus_split_across_reads() -> None:
    left, right = socket.socketpair()
    with left, right:
        pdus = wire.encode_p_data(1, b"x" * 70000, command=False) + wire.encode_release_rq()
        reader = wire.PduReader(right, size=4096)
        for i in range(0, len(pdus), 1000):
            left.sendall(pdus[i:i + 1000])
        kind, body = reader.read()
        assert kind == wire.P_DATA_TF and len(body) == 70006
        assert reader.read()[0] == wire.RELEASE_RQ
        left.close()
        with pytest.raises(ConnectionResetError):
            reader.read()


def test_reader_refuses_unknown_types_and_huge_pdus() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"\x09\x00\x00\x00\x00\x00")
        with pytest.raises(wire.ProtocolError, match="unknown PDU type"):
            wire.PduReader(right).read()
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"\x04\x00\xff\xff\xff\xff")
        with pytest.raises(wire.ProtocolError, match="larger than"):
            wire.PduReader(right).read()


def test_command_round_trip_and_response() -> None:
    raw = dimse.encode_request(dimse.C_STORE_RQ, 7, MR, "1.2.3.4", has_data_set=True)
    command = dimse.parse_command(raw)
    assert command == dimse.Command(dimse.C_STORE_RQ, 7, MR, "1.2.3.4", True)
    response = dimse.encode_response(command, dimse.OUT_OF_RESOURCES, comment="disk full\\ü")
    assert dimse.parse_status(response) == dimse.OUT_OF_RESOURCES
    assert b"disk full??" in response  # backslash and non-ASCII never reach the peer
    echo = dimse.parse_command(dimse.encode_request(dimse.C_ECHO_RQ, 1, "1.2.840.10008.1.1", "", has_data_set=False))
    assert not echo.has_data_set


@pytest.mark.parametrize("raw", [b"\x00\x00", b"\x00\x00\x00\x01\x10\x00\x00\x00x", b"\x08\x00\x00\x00\x02\x00\x00\x00ab"])
def test_bad_commands_are_command_errors(raw: bytes) -> None:
    with pytest.raises(dimse.CommandError):
        dimse.parse_command(raw)
