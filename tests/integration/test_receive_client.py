"""A byte-level DICOM sender for the endpoint's tests (hostile ones included), and its own checks.

Built on the endpoint's PDU and DIMSE encoders, so a test can send what no
well-behaved library would: garbage data sets, lying lengths, PDVs on
contexts that were never accepted, aborts in the middle of an instance.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage

from bidsflux.receive import Endpoint, EndpointOptions, Spool
from bidsflux.receive import _dimse as dimse
from bidsflux.receive import _wire as wire

VERIFICATION = "1.2.840.10008.1.1"


class RawScu:
    """One association, driven by hand."""

    def __init__(self, host: str, port: int, *, called: str = "BIDSFLUX", calling: str = "RAWSCU",
                 contexts: list[tuple[int, str, tuple[str, ...]]] | None = None, max_pdu: int = 16384,
                 tls: ssl.SSLContext | None = None, timeout: float = 30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.reader = wire.PduReader(self.sock)
        self.called, self.calling, self.max_pdu = called, calling, max_pdu
        self.contexts = contexts or [(1, MRImageStorage, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
                                     (3, VERIFICATION, (ImplicitVRLittleEndian,))]
        self.accepted: dict[int, str] = {}
        self.message_id = 0

    def associate(self) -> tuple[int, bytes]:
        """Send the A-ASSOCIATE-RQ; return the answer's PDU type and body (AC, RJ or ABORT)."""
        proposed = [wire.ProposedContext(cid, abstract, syntaxes) for cid, abstract, syntaxes in self.contexts]
        self.sock.sendall(wire.encode_associate_rq(self.called, self.calling, proposed, max_pdu=self.max_pdu))
        kind, body = self.reader.read()
        if kind == wire.ASSOCIATE_AC:
            answered, _ = wire.parse_associate_ac(body)
            self.accepted = {cx.context_id: cx.transfer_syntax for cx in answered if cx.result == wire.PC_ACCEPT}
        return kind, bytes(body)

    def _send_message(self, context_id: int, command: bytes, data: bytes | None) -> None:
        self.sock.sendall(wire.encode_p_data(context_id, command, command=True))
        if data is not None:
            step = self.max_pdu - 12
            for start in range(0, max(len(data), 1), step):
                chunk = data[start:start + step]
                self.sock.sendall(wire.encode_p_data(context_id, chunk, command=False,
                                                     last=start + step >= len(data)))

    def response(self) -> int:
        command = bytearray()
        while True:
            kind, body = self.reader.read()
            if kind != wire.P_DATA_TF:
                raise ConnectionError(f"expected a response, got PDU type 0x{kind:02x}")
            for _, control, data in wire.iter_pdvs(body):
                command += data
                if control & 3 == 3:
                    return dimse.parse_status(bytes(command))

    def store(self, data: bytes, sop_class: str, sop_instance: str, context_id: int = 1) -> int:
        self.message_id += 1
        command = dimse.encode_request(dimse.C_STORE_RQ, self.message_id, sop_class, sop_instance, has_data_set=True)
        self._send_message(context_id, command, data)
        return self.response()

    def store_dataset(self, ds: pydicom.Dataset, context_id: int = 1) -> int:
        return self.store(encode(ds, self.accepted[context_id]), str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                          context_id)

    def echo(self, context_id: int = 3) -> int:
        self.message_id += 1
        self._send_message(context_id, dimse.encode_request(dimse.C_ECHO_RQ, self.message_id, VERIFICATION, "",
                                                            has_data_set=False), None)
        return self.response()

    def release(self) -> int:
        self.sock.sendall(wire.encode_release_rq())
        kind, _ = self.reader.read()
        self.close()
        return kind

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def encode(ds: pydicom.Dataset, transfer_syntax: str) -> bytes:
    """A data set's bytes as they travel in a C-STORE (no file meta, no preamble)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = transfer_syntax != "1.2.840.10008.1.2.2"
    buffer.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    pydicom.filewriter.write_dataset(buffer, ds)
    return buffer.getvalue()


def small_dataset(study: str, series: str, sop: str, **tags: Any) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "MR"
    ds.SeriesDescription = "anat-T1w"
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.add_new(0x7FE00010, "OB", bytes(range(256)) * 8)
    return ds


@pytest.fixture
def endpoint(tmp_path: Path):
    running = Endpoint(Spool(tmp_path / "spool", journal_segment_bytes=1 << 22), aet="BIDSFLUX", host="127.0.0.1",
                       port=0, options=EndpointOptions(min_free_bytes=0))
    yield running
    running.stop(grace=2)


def test_echo_store_release(endpoint: Endpoint, tmp_path: Path) -> None:
    scu = RawScu("127.0.0.1", endpoint.port)
    kind, _ = scu.associate()
    assert kind == wire.ASSOCIATE_AC and scu.accepted[1] == ExplicitVRLittleEndian
    assert scu.echo() == 0
    assert scu.store_dataset(small_dataset("1.2.3", "1.2.3.4", "1.2.3.4.5")) == 0
    assert scu.release() == wire.RELEASE_RP
    kept = tmp_path / "spool" / "incoming" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert pydicom.dcmread(kept).SeriesDescription == "anat-T1w"


def test_unknown_operation_is_answered_not_fatal(endpoint: Endpoint) -> None:
    scu = RawScu("127.0.0.1", endpoint.port)
    scu.associate()
    scu.message_id += 1
    find = dimse.encode_request(0x0020, scu.message_id, MRImageStorage, "", has_data_set=True)
    scu._send_message(1, find, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    assert scu.response() == dimse.UNRECOGNIZED_OPERATION
    assert scu.echo() == 0  # the association goes on
    scu.release()
