"""Fast tests of the synthetic scanner: study layout, determinism, headers, CSA.

No network and no external tools; the conversion through heudiconv/dcm2niix
and the C-STORE path live in tests/integration/test_scanner_convert.py.
"""

from __future__ import annotations

import inspect
import io
import queue
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from bidsflux._scu import SenderOnlyQueue
from bidsflux.errors import BidsfluxError, ScannerError
from bidsflux.scanner import StudySpec, _csa, _send, generate_study, instance_count, study_uid, write_study

with warnings.catch_warnings():  # nibabel.nicom warns that its DICOM readers are experimental
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import csareader

SERIES = [
    "anat-scout_ses-01",
    "anat-T1w",
    "fmap-epi_dir-AP",
    "fmap-epi_dir-PA",
    "func-bold_task-rest_run-01",
    "func-bold_task-rest_run-02",
]
SMALL_COUNTS = {1: 3, 2: 32, 3: 24, 4: 24, 5: 120, 6: 120}
SHIM_RE = re.compile(r"^sGRADSPEC\.(asGPAData\[0\]\.lOffset[XYZ]|alShimCurrent\[\d\])\s*=\s*(-?\d+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def study() -> list[Dataset]:
    return list(generate_study(StudySpec()))


def by_series(datasets: list[Dataset]) -> dict[int, list[Dataset]]:
    out: dict[int, list[Dataset]] = {}
    for ds in datasets:
        out.setdefault(int(ds.SeriesNumber), []).append(ds)
    return out


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def phoenix(ds: Dataset) -> str:
    return csareader.get_csa_header(ds, "series")["tags"]["MrPhoenixProtocol"]["items"][0]


def test_series_names_order_and_numbers(study: list[Dataset]) -> None:
    series = by_series(study)
    assert sorted(series) == [1, 2, 3, 4, 5, 6]
    names = [series[n][0].ProtocolName for n in sorted(series)]
    assert names == SERIES
    for items in series.values():
        assert {ds.SeriesDescription for ds in items} == {items[0].ProtocolName}
    # generation order is acquisition order: series never interleave
    assert [int(ds.SeriesNumber) for ds in study] == sorted(int(ds.SeriesNumber) for ds in study)


def test_instance_counts_small(study: list[Dataset]) -> None:
    assert Counter(int(ds.SeriesNumber) for ds in study) == SMALL_COUNTS
    assert instance_count(StudySpec()) == len(study) == 323
    for items in by_series(study).values():
        assert [int(ds.InstanceNumber) for ds in items] == list(range(1, len(items) + 1))
    bold = by_series(study)[5]
    assert [int(ds.AcquisitionNumber) for ds in bold] == [i // 12 + 1 for i in range(120)]


def test_large_size_is_planned_without_generating() -> None:
    assert instance_count(StudySpec(size="large")) == 3 + 176 + 2 * 36 * 3 + 2 * 36 * 300


def test_generation_is_lazy() -> None:
    assert inspect.isgenerator(generate_study(StudySpec(size="large")))
    first = next(generate_study(StudySpec(size="large")))  # only the scout's first slice is computed
    assert first.ProtocolName == "anat-scout_ses-01" and first.Rows == 256


def test_uids_are_valid_unique_and_shared_where_they_should_be(study: list[Dataset]) -> None:
    sops = [ds.SOPInstanceUID for ds in study]
    assert len(set(sops)) == len(sops)
    assert {ds.StudyInstanceUID for ds in study} == {study_uid(StudySpec())}
    assert len({ds.FrameOfReferenceUID for ds in study}) == 1
    assert len({ds.SeriesInstanceUID for ds in study}) == 6
    for uid in (sops[0], study[0].SeriesInstanceUID, study[0].StudyInstanceUID):
        assert uid.is_valid and len(uid) <= 64
    assert all(ds.SOPClassUID == MRImageStorage for ds in study)


def test_same_seed_gives_identical_bytes(study: list[Dataset]) -> None:
    again = by_series(list(generate_study(StudySpec())))
    for number, items in by_series(study).items():
        assert encode(items[0]) == encode(again[number][0])
        assert encode(items[-1]) == encode(again[number][-1])


def test_different_seed_changes_uids_and_noise(study: list[Dataset]) -> None:
    other_spec = StudySpec(seed=1)
    assert study_uid(other_spec) != study_uid(StudySpec())
    other = list(generate_study(other_spec))
    assert not {ds.SOPInstanceUID for ds in study} & {ds.SOPInstanceUID for ds in other}
    assert {ds.SeriesInstanceUID for ds in study}.isdisjoint(ds.SeriesInstanceUID for ds in other)
    assert study[-1].PixelData != other[-1].PixelData
    assert study_uid(StudySpec(patient_id="SUB02")) != study_uid(StudySpec())


def test_headers_look_like_a_siemens_prisma(study: list[Dataset]) -> None:
    series = by_series(study)
    for ds in (items[0] for items in series.values()):
        assert ds.Manufacturer == "SIEMENS" and ds.ManufacturerModelName == "Prisma_fit"
        assert float(ds.MagneticFieldStrength) == 3 and ds.Modality == "MR"
        assert len(ds.ImageType) >= 3 and ds.ImageType[2] == "M"
        assert ds.StudyDescription == "Doe^Demo" and ds.ReferringPhysicianName == "Doe^Jane"
        assert ds.PatientID == "SUB01" and ds.PatientName == "Synthetic^Subject"
        for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "InstitutionName",
                        "StudyDate", "StudyTime", "SeriesDate", "EchoTime", "FlipAngle", "SliceThickness"):
            assert str(ds.get(keyword, "")).strip(), keyword
    assert list(series[1][0].ImageType) == ["ORIGINAL", "PRIMARY", "M", "NORM"]
    assert series[2][0].MRAcquisitionType == "3D"
    for number in (3, 4, 5, 6):
        assert series[number][0].InPlanePhaseEncodingDirection == "COL"
    assert float(series[5][0].RepetitionTime) == 2000


def test_fieldmaps_share_the_bold_geometry(study: list[Dataset]) -> None:
    series = by_series(study)

    def geometry(items: list[Dataset]) -> list[tuple]:
        return [(tuple(ds.ImagePositionPatient), tuple(ds.ImageOrientationPatient), tuple(ds.PixelSpacing),
                 ds.Rows, ds.Columns, ds.SliceThickness) for ds in items[:12]]

    assert geometry(series[3]) == geometry(series[4]) == geometry(series[5]) == geometry(series[6])
    positions = [float(ds.ImagePositionPatient[2]) for ds in series[5][:12]]
    assert np.allclose(np.diff(positions), float(series[5][0].SpacingBetweenSlices))


def test_acquisition_times_increase(study: list[Dataset]) -> None:
    series = by_series(study)
    starts = [items[0].SeriesTime for _, items in sorted(series.items())]
    assert starts == sorted(starts) and len(set(starts)) == 6
    for number in (3, 4, 5, 6):  # 2D: every slice has its own excitation time
        times = [ds.AcquisitionTime for ds in series[number]]
        assert times == sorted(times) and len(set(times)) == len(times)
    assert len({ds.AcquisitionTime for ds in series[2]}) == 1  # 3D: one acquisition
    assert all(ds.ContentTime > ds.AcquisitionTime for ds in study)


def test_pixels_are_plausible_uint16(study: list[Dataset]) -> None:
    series = by_series(study)
    for items in series.values():
        image = items[len(items) // 2].pixel_array
        assert image.dtype == np.uint16 and image.max() <= 4095
        centre = image[image.shape[0] // 4: -image.shape[0] // 4, image.shape[1] // 4: -image.shape[1] // 4]
        assert centre.mean() > 5 * image[:3, :3].mean() + 1  # a head in front of air
    slice_in_vol1, slice_in_vol2 = series[5][6].pixel_array, series[5][18].pixel_array
    assert not np.array_equal(slice_in_vol1, slice_in_vol2)
    assert np.corrcoef(slice_in_vol1.ravel(), slice_in_vol2.ravel())[0, 1] > 0.9


def test_csa_headers_round_trip_through_nibabel(study: list[Dataset]) -> None:
    series = by_series(study)
    shims = set()
    for items in series.values():
        ds = items[0]
        text = phoenix(ds)
        assert text.startswith("### ASCCONV BEGIN") and "### ASCCONV END ###" in text
        assert f'tProtocolName = ""{ds.ProtocolName}""' in re.sub(r"\s+=", " =", text)
        values = dict(SHIM_RE.findall(text))
        assert len(values) == 8 and int(values["asGPAData[0].lOffsetX"]) != 0
        shims.add(tuple(sorted(values.items())))
        image = csareader.get_csa_header(ds, "image")
        normal = np.cross(np.array(ds.ImageOrientationPatient[:3], float), ds.ImageOrientationPatient[3:])
        assert np.allclose(csareader.get_vector(image, "SliceNormalVector", 3), normal)
    assert len(shims) == 1  # one shim state for the session: fmaps match BOLD

    def phase_positive(number: int) -> object:
        return csareader.get_scalar(csareader.get_csa_header(series[number][0], "image"),
                                    "PhaseEncodingDirectionPositive")

    assert [phase_positive(n) for n in (3, 4, 5, 6)] == [1, 0, 1, 1]
    assert phase_positive(2) is None
    epi_header = csareader.get_csa_header(series[5][0], "image")
    assert csareader.get_scalar(epi_header, "BandwidthPerPixelPhaseEncode") == pytest.approx(28.935)
    assert not csareader.is_mosaic(epi_header)


def test_encode_csa2_round_trip() -> None:
    blob = _csa.encode_csa2([("AFloat", "DS", [1.5]), ("Ints", "IS", [1, 2, 3, 4, 5, 6, 7]),
                             ("Text", "LT", ["hello world"]), ("Nothing", "UN", [])])
    assert blob[:4] == b"SV10" and len(blob) % 4 == 0
    tags = csareader.read(blob)["tags"]
    assert tags["AFloat"]["items"] == [1.5] and tags["AFloat"]["n_items"] == 6  # padded like syngo
    assert tags["Ints"]["items"] == [1, 2, 3, 4, 5, 6, 7] and tags["Ints"]["vm"] == 7
    assert tags["Text"]["items"] == ["hello world"] and tags["Text"]["vr"] == "LT"
    assert tags["Nothing"]["items"] == [] and tags["Nothing"]["last3"] == 205
    with pytest.raises(ValueError):
        _csa.encode_csa2([("x" * 64, "DS", [1.0])])
    with pytest.raises(ValueError):
        _csa.encode_csa2([])


def test_ascconv_parses_like_heudiconv_does(study: list[Dataset]) -> None:
    extract = pytest.importorskip("dcmstack.extract")
    parsed = extract.parse_phoenix_prot("MrPhoenixProtocol", phoenix(study[-1]))
    assert parsed["tProtocolName"] == "func-bold_task-rest_run-02"
    assert parsed["alTR[0]"] == 2_000_000 and parsed["sSliceArray.lSize"] == 12


def test_write_study_writes_one_part10_file_per_instance(tmp_path: Path) -> None:
    paths = write_study(StudySpec(), tmp_path / "a")
    assert len(paths) == 323 and all(p.is_file() for p in paths)
    assert min(p.parent.name for p in paths) == "01-anat-scout_ses-01"
    assert len({p.parent for p in paths}) == 6
    raw = paths[-1].read_bytes()
    assert raw[128:132] == b"DICM"
    back = pydicom.dcmread(paths[-1])
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.SOPInstanceUID == back.file_meta.MediaStorageSOPInstanceUID
    # a second write gives byte-identical files
    again = write_study(StudySpec(), tmp_path / "b")
    assert [p.relative_to(tmp_path / "b") for p in again] == [p.relative_to(tmp_path / "a") for p in paths]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths[::40], again[::40], strict=True))


def test_invalid_spec_raises_scanner_error() -> None:
    with pytest.raises(ScannerError, match="size"):
        StudySpec(size="medium")
    with pytest.raises(ScannerError, match="session"):
        StudySpec(session="0-1")
    with pytest.raises(ScannerError):
        StudySpec(patient_id=" ")
    with pytest.raises(ScannerError, match="seed"):
        StudySpec(seed=-1)
    with pytest.raises(ScannerError, match="0010,0020"):  # LO holds at most 64 characters
        next(generate_study(StudySpec(patient_id="X" * 65)))
    assert issubclass(ScannerError, BidsfluxError)


def test_spec_session_flows_into_the_scout_name() -> None:
    first = next(generate_study(StudySpec(session="pre")))
    assert first.ProtocolName == "anat-scout_ses-pre"


def test_reactor_cannot_take_responses_meant_for_the_sender() -> None:
    responses = SenderOnlyQueue()
    responses.put((1, "C-STORE-RSP"))
    with pytest.raises(queue.Empty):  # the association reactor polls without blocking
        responses.get(block=False)
    assert responses.get(block=True, timeout=1) == (1, "C-STORE-RSP")


@pytest.mark.parametrize("title", ["", "X" * 17, "A\\B"])
def test_invalid_ae_titles_fail_before_connecting(title: str) -> None:
    with pytest.raises(ScannerError, match="invalid AE title"):
        _send.send_study(StudySpec(), "127.0.0.1", 9, called_aet=title)
