"""Conformance: every real file of pydicom-data and heudiconv's test data, sent by dcmtk's storescu in
its own transfer syntax, is kept byte for byte as it arrived, in that syntax (no decompression, no
re-encoding).  The oracle is dcmtk's storescp in bit-preserving mode, sent the same files: storescu
itself re-encodes some of pydicom's odd files, so the originals are not the reference.  Data sets
without usable UIDs are quarantined; a resend with other bytes is kept as a conflict."""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from ..conftest import free_port, wait_for_port

from bidsflux.naming import is_uid
from bidsflux.receive import Endpoint, EndpointOptions, HeaderError, Spool, read_header, read_part10

HEUDICONV_DATA = Path(pydicom.__file__).parents[1] / "heudiconv" / "tests" / "data"
# storescu proposes a file's own syntax only when told to (else it converts to an uncompressed one).
OPTION = {"1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.2": "-xb",
          "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
          "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
          "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr"}


def _groups() -> dict[str, list[tuple[Path, str]]]:
    found: dict[str, list[tuple[Path, str]]] = collections.defaultdict(list)
    for path in [Path(p) for p in get_testdata_files()] + sorted(HEUDICONV_DATA.rglob("*.dcm")):
        if not path.is_file():
            continue
        head = path.read_bytes()[:65536]
        if head[128:132] != b"DICM":
            continue
        try:
            meta = read_part10(head)
        except Exception:  # noqa: BLE001 - deliberately broken files are not candidates
            continue
        found[meta.transfer_syntax].append((path, meta.sop_class_uid))
    return found


GROUPS = _groups()


def _data_sets(folder: Path) -> dict[str, list[bytes]]:
    """SOP Instance UID -> the data sets (bytes after the File Meta Information) kept under ``folder``."""
    found: dict[str, list[bytes]] = collections.defaultdict(list)
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".json":
            raw = path.read_bytes()
            meta = read_part10(raw[:65536])
            found[meta.sop_instance_uid].append(raw[meta.data_offset:])
    return found


def _quarantined(folder: Path) -> set[bytes]:
    return {p.read_bytes() for p in folder.rglob("*.dcm")}  # data sets only: no valid UIDs, no meta


def test_every_proposed_syntax_has_real_files() -> None:
    assert {s for s in OPTION if GROUPS.get(s)} == set(OPTION)
    assert sum(len(GROUPS[s]) for s in OPTION) > 200


@pytest.fixture
def reference(tmp_path: Path):
    """dcmtk's storescp in bit-preserving mode: it writes each data set exactly as it arrived."""
    folder = tmp_path / "reference"
    folder.mkdir()
    port = free_port()
    process = subprocess.Popen(["/usr/bin/storescp", "+B", "+xa", "-pm", "-od", str(folder), str(port)],
                               env={"TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        yield folder, port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("syntax", sorted(OPTION))
def test_real_files_are_kept_exactly_as_sent(tmp_path: Path, reference: tuple[Path, int], syntax: str) -> None:
    spool = tmp_path / "spool"
    endpoint = Endpoint(Spool(spool, journal_segment_bytes=1 << 23, journal_spare=0), aet="BIDSFLUX",
                        host="127.0.0.1", port=0, options=EndpointOptions(min_free_bytes=0))
    try:
        by_class: dict[str, list[Path]] = collections.defaultdict(list)
        for path, sop_class in GROUPS[syntax]:
            by_class[sop_class].append(path)
        for paths in by_class.values():  # one class at a time: storescu proposes at most 128 contexts
            for port in (endpoint.port, reference[1]):
                subprocess.run(["/usr/bin/storescu", OPTION[syntax], "-nh", "-aec", "BIDSFLUX", "127.0.0.1",
                                str(port), *map(str, paths)], env={"TCP_NODELAY": "1"}, capture_output=True,
                               timeout=120)
    finally:
        endpoint.stop(grace=2)
    sent = _data_sets(reference[0])
    kept = _data_sets(spool / "incoming")
    for uid, versions in _data_sets(spool / "conflicts").items():
        kept[uid].extend(versions)
    quarantined = _quarantined(spool / "quarantine")
    assert sent, "storescu sent nothing"
    for uid, versions in sent.items():
        for data in versions:
            if is_uid(uid) and data in kept.get(uid, []):
                continue  # filed (or kept as a conflicting resend) byte for byte
            assert data in quarantined, f"{uid}: what arrived is neither filed nor quarantined"
            assert not _fileable(data, syntax, uid), f"{uid}: quarantined though it could be filed"
    for path in (spool / "incoming").rglob("*.dcm"):  # and every filed file is in the syntax it came in
        assert read_part10(path.read_bytes()[:65536]).transfer_syntax == syntax



def _fileable(data: bytes, syntax: str, sop: str) -> bool:
    try:
        header = read_header(data, syntax, complete=True)
    except HeaderError:
        return False
    return all(is_uid(u) for u in (header.study_uid, header.series_uid, sop)) and header.sop_instance_uid == sop
