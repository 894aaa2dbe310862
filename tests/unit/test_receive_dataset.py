"""Reading a data set's identifying tags without decoding it, in every encoding; never crashing."""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from bidsflux.receive import HeaderError, read_header, read_part10
from bidsflux.receive._dataset import DEFLATED, EXPLICIT_BE, IMPLICIT_LE, NeedMore

EXPLICIT_LE = "1.2.840.10008.1.2.1"
HEUDICONV_DATA = Path(pydicom.__file__).parents[1] / "heudiconv" / "tests" / "data"


def _real_files() -> list[Path]:
    files = [Path(p) for p in get_testdata_files()] + sorted(HEUDICONV_DATA.rglob("*.dcm"))
    return [p for p in files if p.is_file() and p.read_bytes()[128:132] == b"DICM"]


def test_every_real_file_agrees_with_pydicom() -> None:
    checked = 0
    warnings.simplefilter("ignore")  # some of pydicom's files are deliberately odd; pytest restores filters
    for path in _real_files():
        raw = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if not all(k in ds for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
            continue
        meta = read_part10(raw)
        header = read_header(raw[meta.data_offset:], meta.transfer_syntax, complete=True)
        assert (header.study_uid, header.series_uid, header.sop_instance_uid) == (
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID), path.name
        assert header.series_description == str(ds.get("SeriesDescription", "")), path.name
        checked += 1
    assert checked > 200  # pydicom-data and heudiconv's series, every transfer syntax among them


def _encode(ds: Dataset, little: bool, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _nested() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "9.9.9"
    inner.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence = Sequence([inner, inner])
    ds.SeriesDescription = "func-bold"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.add_new(0x00291010, "OB", b"\x00" * 300)  # after the tags we need: never reached
    return ds


@pytest.mark.parametrize(("syntax", "little", "implicit"), [
    (IMPLICIT_LE, True, True), (EXPLICIT_LE, True, False), (EXPLICIT_BE, False, False)])
@pytest.mark.parametrize("undefined_lengths", [False, True])
def test_nested_sequences_in_each_encoding(syntax: str, little: bool, implicit: bool,
                                           undefined_lengths: bool) -> None:
    ds = _nested()
    if undefined_lengths:
        ds.ReferencedImageSequence.is_undefined_length = True
        for item in ds.ReferencedImageSequence:
            item.is_undefined_length_sequence_item = True
    header = read_header(_encode(ds, little, implicit), syntax, complete=True)
    assert (header.study_uid, header.series_uid, header.sop_instance_uid) == ("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert header.series_description == "func-bold"


def test_deflated() -> None:
    raw = _encode(_nested(), True, False)
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(raw) + packer.flush()
    assert read_header(deflated, DEFLATED, complete=True).series_uid == "1.2.3.4"
    with pytest.raises(HeaderError, match="inflated"):
        read_header(b"not deflate at all", DEFLATED, complete=True)


def test_truncated_needs_more_or_is_reported() -> None:
    raw = _encode(_nested(), True, False)
    cut = raw[:40]
    with pytest.raises(NeedMore):
        read_header(cut, EXPLICIT_LE, complete=False)
    with pytest.raises(HeaderError, match="truncated"):
        read_header(cut, EXPLICIT_LE, complete=True)


def test_missing_uids_are_named() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2"
    with pytest.raises(HeaderError, match="StudyInstanceUID, SeriesInstanceUID"):
        read_header(_encode(ds, True, False), EXPLICIT_LE, complete=True)


def test_deep_nesting_is_refused() -> None:
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # item, undefined length
    seq = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff"  # (0008,1140) SQ, undefined length
    with pytest.raises(HeaderError, match="deeply"):
        read_header((seq + item) * 40, EXPLICIT_LE, complete=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from([IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED]))
def test_garbage_never_raises_anything_else(data: bytes, syntax: str) -> None:
    try:
        header = read_header(data, syntax, complete=True)
    except HeaderError:
        return
    assert header.study_uid and header.series_uid and header.sop_instance_uid
