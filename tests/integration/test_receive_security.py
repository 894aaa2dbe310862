"""Who may send (allow-list, DICOM TLS) and back-pressure, with dcmtk as the sender."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.data import get_testdata_file

from bidsflux.receive import AllowList, Endpoint, EndpointOptions, Spool, TlsFiles

DCMTK_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}
MR_SMALL = get_testdata_file("MR_small.dcm")


def _dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=DCMTK_ENV, capture_output=True, text=True, timeout=60)


def _stored(spool: Path) -> list[Path]:
    return list((spool / "incoming").rglob("*.dcm"))


@pytest.fixture
def start(tmp_path: Path):
    running: list[Endpoint] = []

    def _start(**options: object) -> Endpoint:
        spool = Spool(tmp_path / "spool", journal_segment_bytes=1 << 22, journal_spare=1)
        endpoint = Endpoint(spool, aet="BIDSFLUX", host="127.0.0.1", port=0,
                            options=EndpointOptions(**{"min_free_bytes": 0, **options}))  # type: ignore[arg-type]
        running.append(endpoint)
        return endpoint

    yield _start
    for endpoint in running:
        endpoint.stop(grace=1)


def test_allow_list_refuses_unknown_senders_and_logs_the_peer(start, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    endpoint = start(allow=AllowList.parse((("SCANNER1", "127.0.0.1"), ("PACS", "10.0.0.0/8"))))
    port = str(endpoint.port)
    with caplog.at_level(logging.WARNING, logger="bidsflux.receive"):
        refused = _dcmtk("/usr/bin/storescu", "-aet", "INTRUDER", "-aec", "BIDSFLUX", "127.0.0.1", port, MR_SMALL)
        wrong_host = _dcmtk("/usr/bin/echoscu", "-aet", "PACS", "-aec", "BIDSFLUX", "127.0.0.1", port)
        wrong_called = _dcmtk("/usr/bin/echoscu", "-aet", "SCANNER1", "-aec", "SOMEONE", "127.0.0.1", port)
    assert refused.returncode != 0 and "Rejected" in refused.stderr + refused.stdout
    assert wrong_host.returncode != 0 and wrong_called.returncode != 0
    assert _stored(tmp_path / "spool") == []
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused association")]
    assert len(refusals) == 3 and all("127.0.0.1:" in m for m in refusals)
    assert "'INTRUDER'" in refusals[0] and "allow-list" in refusals[0]
    assert endpoint.state.refused_associations == 3
    allowed = _dcmtk("/usr/bin/storescu", "-aet", "SCANNER1", "-aec", "BIDSFLUX", "127.0.0.1", port, MR_SMALL)
    assert allowed.returncode == 0, allowed.stderr
    assert len(_stored(tmp_path / "spool")) == 1


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey]
                 | None = None, *, ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[str, str]:
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[str, str]]:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("bids-flux test CA", ca_key, ca=True)
    issued = {}
    for name in ("server", "scanner"):
        key = ec.generate_private_key(ec.SECP256R1())
        issued[name] = _write(folder, name, key, _certificate(name, key, (ca.subject, ca_key)))
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    issued["stranger"] = _write(folder, "stranger", stranger_key, _certificate("stranger", stranger_key))
    issued["ca"] = _write(folder, "ca", ca_key, ca)
    del other_key
    return issued


def test_tls_sender_with_a_valid_certificate_works_others_are_refused(start, pki, tmp_path: Path) -> None:
    server_key, server_cert = pki["server"]
    ca_cert = pki["ca"][1]
    endpoint = start(tls=TlsFiles(Path(server_cert), Path(server_key), Path(ca_cert)), tls_port=0, plain=False)
    assert endpoint.tls_port
    port = str(endpoint.tls_port)
    scanner_key, scanner_cert = pki["scanner"]
    ok = _dcmtk("/usr/bin/storescu", "+tls", scanner_key, scanner_cert, "+cf", ca_cert, "-aec", "BIDSFLUX",
                "127.0.0.1", port, MR_SMALL)
    assert ok.returncode == 0, ok.stderr
    assert len(_stored(tmp_path / "spool")) == 1
    anonymous = _dcmtk("/usr/bin/storescu", "+tla", "+cf", ca_cert, "-aec", "BIDSFLUX", "127.0.0.1", port, MR_SMALL)
    stranger = _dcmtk("/usr/bin/storescu", "+tls", *pki["stranger"], "+cf", ca_cert, "-aec", "BIDSFLUX",
                      "127.0.0.1", port, MR_SMALL)
    plain = _dcmtk("/usr/bin/echoscu", "-aec", "BIDSFLUX", "127.0.0.1", port)
    assert anonymous.returncode != 0 and stranger.returncode != 0 and plain.returncode != 0
    assert len(_stored(tmp_path / "spool")) == 1
    assert endpoint.state.refused_associations >= 2  # the two TLS handshakes without a trusted certificate


def test_back_pressure_answers_out_of_resources_and_keeps_nothing(start, tmp_path: Path) -> None:
    endpoint = start(min_free_bytes=10**18)  # more free space than any disk has
    sent = _dcmtk("/usr/bin/storescu", "-v", "-aec", "BIDSFLUX", "127.0.0.1", str(endpoint.port), MR_SMALL)
    assert sent.returncode != 0
    assert "Refused: OutOfResources" in sent.stdout + sent.stderr
    assert _stored(tmp_path / "spool") == [] and list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_back_pressure_on_the_indexing_backlog(start, tmp_path: Path) -> None:
    waiting = [3]
    endpoint = start(max_backlog=2, backlog=lambda: waiting[0], pressure_interval=0)
    refused = _dcmtk("/usr/bin/storescu", "-v", "-aec", "BIDSFLUX", "127.0.0.1", str(endpoint.port), MR_SMALL)
    assert refused.returncode != 0 and "Refused: OutOfResources" in refused.stdout + refused.stderr
    waiting[0] = 2  # indexing caught up: the scanner's retry goes through
    retried = _dcmtk("/usr/bin/storescu", "-aec", "BIDSFLUX", "127.0.0.1", str(endpoint.port), MR_SMALL)
    assert retried.returncode == 0, retried.stderr
    assert len(_stored(tmp_path / "spool")) == 1
