"""The DICOM endpoint against dcmtk's echoscu/storescu and real test files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from bidsflux.receive import Endpoint, Spool

DCMTK_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}


@pytest.fixture
def endpoint(tmp_path: Path):
    running = Endpoint(Spool(tmp_path / "spool"), aet="BIDSFLUX", host="127.0.0.1", port=0)
    yield running
    running.stop()


def test_echo(endpoint: Endpoint) -> None:
    done = subprocess.run(["/usr/bin/echoscu", "-aec", "BIDSFLUX", "127.0.0.1", str(endpoint.port)],
                          env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# storescu proposes uncompressed syntaxes unless told otherwise (and converts the
# file to the first one accepted); each option makes it propose the file's own.
@pytest.mark.parametrize(("name", "option"), [
    ("MR_small.dcm", "-xe"), ("MR_small_bigendian.dcm", "-xb"), ("MR_small_RLE.dcm", "-xr"),
    ("MR_small_jp2klossless.dcm", "-xv"), ("JPEG2000.dcm", "-xw"), ("CT_small.dcm", "-xe"),
])
def test_instances_are_kept_exactly_as_sent(endpoint: Endpoint, tmp_path: Path, name: str, option: str) -> None:
    source = Path(get_testdata_file(name))
    done = subprocess.run(["/usr/bin/storescu", option, "-aet", "DCMTKSCU", "-aec", "BIDSFLUX", "127.0.0.1",
                           str(endpoint.port), str(source)], env=DCMTK_ENV, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    original = pydicom.dcmread(source)
    kept = list((tmp_path / "spool" / "incoming").rglob("*.dcm"))
    assert len(kept) == 1
    received = pydicom.dcmread(kept[0])
    assert kept[0].name == f"{original.SOPInstanceUID}.dcm"
    assert kept[0].parent.name == original.SeriesInstanceUID
    assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert received.PixelData == original.PixelData  # no decompression, no re-encoding
    with endpoint.state.lock:
        counters = endpoint.state.studies[original.StudyInstanceUID]
    assert counters.instances == 1 and counters.calling_aet == "DCMTKSCU"


def test_resend_is_a_duplicate_not_a_second_file(endpoint: Endpoint, tmp_path: Path) -> None:
    source = get_testdata_file("MR_small.dcm")
    for _ in range(2):
        subprocess.run(["/usr/bin/storescu", "-aec", "BIDSFLUX", "127.0.0.1", str(endpoint.port), source],
                       env=DCMTK_ENV, check=True, capture_output=True, timeout=60)
    assert len(list((tmp_path / "spool" / "incoming").rglob("*.dcm"))) == 1
    with endpoint.state.lock:
        counters = next(iter(endpoint.state.studies.values()))
    assert (counters.instances, counters.duplicates) == (1, 1)
