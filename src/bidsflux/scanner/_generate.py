"""Generate a synthetic Siemens MR study as pydicom datasets, deterministically.

A study is six series named the ReproIn way (scout, T1w, two PE-polar EPI
field maps, two BOLD runs), one classic single-frame MR Image instance per
slice, with the headers and Siemens CSA blobs that dcm2niix and heudiconv need
to produce BIDS with ``IntendedFor``.  Everything (UIDs, times, noise) derives
from the :class:`StudySpec`, so the same spec always yields identical bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import astuple, dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from bidsflux.errors import ScannerError
from bidsflux.scanner import _csa

_NAMESPACE = uuid.UUID("6f0c5d2e-4b7a-5c1e-9d3f-2a8b7c6d5e4f")
_IMPLEMENTATION_UID = UID(f"2.25.{uuid.uuid5(_NAMESPACE, 'implementation').int}")
_DATE, _BIRTH_DATE, _AGE = "20240312", "19900615", "033Y"
_GAP_US = 30_000_000  # pause between series, as at a real console


@dataclass(frozen=True)
class StudySpec:
    """What to scan; every field feeds the UIDs, so changing any changes the study."""

    seed: int = 0
    patient_id: str = "SUB01"  # heudiconv subject: lower-cased, '-' and '_' removed
    patient_name: str = "Synthetic^Subject"
    study_description: str = "Doe^Demo"  # ReproIn locator 'PI^Project'
    referring_physician: str = "Doe^Jane"
    size: str = "small"  # "small" | "large"
    session: str = "01"  # becomes '_ses-01' in the scout's ProtocolName

    def __post_init__(self) -> None:
        if self.size not in _SIZES:
            raise ScannerError(f"unknown study size {self.size!r}", hint="use 'small' or 'large'")
        if not self.session.isalnum():
            raise ScannerError(f"session {self.session!r} is not a BIDS label", hint="use letters and digits")
        if not self.patient_id.strip():
            raise ScannerError("patient_id is empty", hint="give a subject identifier such as 'SUB01'")
        if self.seed < 0:
            raise ScannerError(f"seed {self.seed} is negative", hint="use a seed of 0 or more")


# scout matrix, T1w slices and matrix, EPI slices and matrix, BOLD and fmap volumes
_SIZES = {"small": (64, 32, 64, 12, 32, 10, 2), "large": (256, 176, 256, 36, 96, 300, 3)}


@dataclass(frozen=True)
class _Series:
    number: int
    protocol: str
    kind: str  # "scout" | "t1w" | "epi"
    matrix: int
    slices: int
    volumes: int
    fov: float  # in-plane, mm
    spacing: float  # slice centre to centre, mm
    tr: float  # ms
    te: float  # ms
    flip: float
    pe_positive: int | None = None  # CSA PhaseEncodingDirectionPositive: 1 = AP, 0 = PA
    ti: float | None = None
    start_us: int = 0  # after study start

    @property
    def duration_s(self) -> int:
        return {"scout": 14, "t1w": 321}.get(self.kind, round(self.volumes * self.tr / 1000))

    @property
    def sequence(self) -> tuple[list[str], list[str], str]:
        """ScanningSequence, SequenceVariant, SequenceName as a Prisma writes them."""
        if self.kind == "scout":
            return ["GR"], ["SP", "OSP"], "*fl2d1"
        if self.kind == "t1w":
            return ["GR", "IR"], ["SK", "SP", "MP"], "*tfl3d1_16ns"
        return ["EP"], ["SK"], ("*epse2d1_%d" if self.te > 50 else "*epfid2d1_%d") % self.matrix


def _plan(spec: StudySpec) -> list[_Series]:
    """The series of ``spec`` in acquisition order, with start times."""
    scout, t1_n, t1_m, epi_n, epi_m, bold_v, fmap_v = _SIZES[spec.size]
    epi: dict[str, Any] = {"kind": "epi", "matrix": epi_m, "slices": epi_n, "fov": 192.0, "spacing": 108.0 / epi_n}
    fmap: dict[str, Any] = {**epi, "volumes": fmap_v, "tr": 7220.0, "te": 66.0, "flip": 90.0}  # spin-echo EPI
    bold: dict[str, Any] = {**epi, "volumes": bold_v, "tr": 2000.0, "te": 30.0, "flip": 77.0, "pe_positive": 1}
    series = [
        _Series(1, f"anat-scout_ses-{spec.session}", "scout", scout, 3, 1, 260.0, 7.0, 8.6, 4.0, 20.0),
        _Series(2, "anat-T1w", "t1w", t1_m, t1_n, 1, 256.0, 176.0 / t1_n, 2300.0, 2.32, 8.0, ti=900.0),
        _Series(3, "fmap-epi_dir-AP", pe_positive=1, **fmap),
        _Series(4, "fmap-epi_dir-PA", pe_positive=0, **fmap),
        _Series(5, "func-bold_task-rest_run-01", **bold),
        _Series(6, "func-bold_task-rest_run-02", **bold),
    ]
    start, timed = _GAP_US, []
    for s in series:
        timed.append(replace(s, start_us=start))
        start += s.duration_s * 1_000_000 + _GAP_US
    return timed


def instance_count(spec: StudySpec) -> int:
    """How many instances :func:`generate_study` will yield for ``spec``."""
    return sum(s.slices * s.volumes for s in _plan(spec))


def _uid(spec: StudySpec, *parts: object) -> UID:
    # pydicom's generate_uid(prefix=None) ignores entropy_srcs and is random, so
    # derive a name-based UUID (RFC 4122 v5) and use the 2.25 arc ourselves.
    name = "\x1f".join(str(p) for p in (*astuple(spec), *parts))
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


def study_uid(spec: StudySpec) -> str:
    """The StudyInstanceUID :func:`generate_study` uses for ``spec``."""
    return str(_uid(spec, "study"))


def _tm(spec: StudySpec, offset_us: int) -> str:
    """DICOM TM of study start plus ``offset_us``; the start time varies with the seed."""
    sec, frac = divmod((8 * 3600 + spec.seed % 480 * 60) * 1_000_000 + offset_us, 1_000_000)
    return f"{sec // 3600:02d}{sec // 60 % 60:02d}{sec % 60:02d}.{frac:06d}"


def _ds(value: float) -> str:
    """Decimal string short enough for DS (16 chars) and stable across platforms."""
    text = f"{value:.5f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _geometry(s: _Series, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slice centre, row direction, column direction) in LPS mm, head at isocentre."""
    if s.kind == "scout":  # sagittal, coronal, axial through isocentre
        row, col = [((0, 1, 0), (0, 0, -1)), ((1, 0, 0), (0, 0, -1)), ((1, 0, 0), (0, 1, 0))][index]
        return np.zeros(3), np.array(row, float), np.array(col, float)
    row, col = ((0, 1, 0), (0, 0, -1)) if s.kind == "t1w" else ((1, 0, 0), (0, 1, 0))
    row_v, col_v = np.array(row, float), np.array(col, float)
    return (index - (s.slices - 1) / 2) * s.spacing * np.cross(row_v, col_v), row_v, col_v


# intensity of scalp, skull, CSF, grey matter, white matter per contrast; and full scale
_CONTRAST = {"t1w": (0.85, 0.06, 0.12, 0.45, 0.75), "epi": (0.25, 0.05, 0.95, 0.75, 0.55),
             "scout": (0.7, 0.08, 0.3, 0.5, 0.65)}
_SCALE = {"t1w": 3000.0, "epi": 2000.0, "scout": 2200.0}


def _phantom(s: _Series, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free slice (rows x cols, float32) of a head-like ellipsoid, and the
    activation map that modulates BOLD over time; vectorised over all pixels."""
    centre, row, col = _geometry(s, index)
    offs = (np.arange(s.matrix) - (s.matrix - 1) / 2) * (s.fov / s.matrix)
    p = centre + offs[None, :, None] * row + offs[:, None, None] * col  # (rows, cols, xyz)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    r = np.sqrt((x / 72) ** 2 + (y / 92) ** 2 + (z / 80) ** 2)
    vent = ((np.abs(x) - 9) / 5) ** 2 + (y / 18) ** 2 + ((z - 10) / 9) ** 2 < 1
    wm = np.clip(1.6 * (0.85 - r) + 0.25 * np.cos(x / 6) * np.cos(y / 7) * np.cos(z / 5), 0, 1)
    scalp, skull, csf, gm, white = _CONTRAST[s.kind]
    img = np.where(r > 1, 0.0, np.where(r > 0.94, scalp, np.where(r > 0.88, skull, csf)))
    img = np.where((r <= 0.85) & ~vent, gm + (white - gm) * wm, img)
    act = np.exp(-(x**2 + (y - 60) ** 2 + (z - 10) ** 2) / (2 * 15.0**2)) * (r < 0.85)
    if s.kind == "epi":  # a PE-polarity dependent shift mimics susceptibility distortion
        shift = 1 if s.pe_positive else -1
        img, act = np.roll(img, shift, axis=0), np.roll(act, shift, axis=0)
    return (img * _SCALE[s.kind]).astype(np.float32), act.astype(np.float32)


@cache
def _tag(keyword: str) -> tuple[BaseTag, str]:
    number = tag_for_keyword(keyword)
    if number is None:
        raise KeyError(f"not a DICOM keyword: {keyword}")
    tag = Tag(number)
    return tag, dictionary_VR(tag)


def _el(keyword: str, value: object) -> tuple[BaseTag, str, object]:
    return (*_tag(keyword), value)


_Elements = list[tuple[BaseTag, str, object]]


def _series_elements(spec: StudySpec, s: _Series, shims: tuple[int, ...]) -> _Elements:
    """(tag, VR, value) of everything shared by the instances of a series; each
    instance gets its own DataElements, so callers may modify what they receive."""
    epi, t1 = s.kind == "epi", s.kind == "t1w"
    scanning, variant, seq_name = s.sequence
    pe = "ROW" if t1 else "COL"
    bw = {"scout": 320.0, "t1w": 200.0, "epi": 2290.0}[s.kind]
    dwell_ns = round(1e9 / (bw * s.matrix * 2))  # readout oversampled twice, as Siemens does
    bw_pe = 28.935 if epi else None
    uid = _uid(spec, "study")
    els = [_el(k, v) for k, v in (
        ("SpecificCharacterSet", "ISO_IR 100"),
        ("ImageType", ["ORIGINAL", "PRIMARY", "M", "NORM" if s.kind == "scout" else "ND"]),
        ("InstanceCreationDate", _DATE), ("SOPClassUID", MRImageStorage), ("StudyDate", _DATE),
        ("SeriesDate", _DATE), ("AcquisitionDate", _DATE), ("ContentDate", _DATE),
        ("StudyTime", _tm(spec, 0)[:6]), ("SeriesTime", _tm(spec, s.start_us)),
        ("AccessionNumber", "A" + uid[-12:]), ("Modality", "MR"), ("Manufacturer", "SIEMENS"),
        ("InstitutionName", "Synthetic Imaging Center"), ("InstitutionAddress", "1 Loopback Way"),
        ("ReferringPhysicianName", spec.referring_physician), ("StationName", "SYNTHMR01"),
        ("StudyDescription", spec.study_description), ("SeriesDescription", s.protocol),
        ("InstitutionalDepartmentName", "Neuroimaging"), ("ManufacturerModelName", "Prisma_fit"),
        ("PatientName", spec.patient_name), ("PatientID", spec.patient_id),
        ("PatientBirthDate", _BIRTH_DATE), ("PatientSex", "F"), ("PatientAge", _AGE),
        ("PatientSize", "1.7"), ("PatientWeight", "70"), ("BodyPartExamined", "BRAIN"),
        ("ScanningSequence", scanning), ("SequenceVariant", variant), ("ScanOptions", "FS" if epi else ""),
        ("MRAcquisitionType", "3D" if t1 else "2D"), ("SequenceName", seq_name), ("AngioFlag", "N"),
        ("SliceThickness", _ds(s.spacing)), ("RepetitionTime", _ds(s.tr)), ("EchoTime", _ds(s.te)),
        ("NumberOfAverages", "1"), ("ImagingFrequency", "123.251815"), ("ImagedNucleus", "1H"),
        ("EchoNumbers", "1"), ("MagneticFieldStrength", "3"), ("SpacingBetweenSlices", _ds(s.spacing)),
        ("NumberOfPhaseEncodingSteps", str(s.matrix)), ("EchoTrainLength", str(s.matrix if epi else 1)),
        ("PercentSampling", "100"), ("PercentPhaseFieldOfView", "100"), ("PixelBandwidth", _ds(bw)),
        ("DeviceSerialNumber", "166112"), ("SoftwareVersions", "syngo MR E11"),
        ("ProtocolName", s.protocol), ("TransmitCoilName", "Body"),
        ("AcquisitionMatrix", [s.matrix, 0, 0, s.matrix] if pe == "COL" else [0, s.matrix, s.matrix, 0]),
        ("InPlanePhaseEncodingDirection", pe), ("FlipAngle", _ds(s.flip)), ("VariableFlipAngleFlag", "N"),
        ("SAR", "0.1"), ("dBdt", "0"), ("PatientPosition", "HFS"), ("StudyInstanceUID", uid),
        ("SeriesInstanceUID", _uid(spec, "series", s.number)), ("StudyID", "1"),
        ("SeriesNumber", str(s.number)), ("FrameOfReferenceUID", _uid(spec, "frame")),
        ("PositionReferenceIndicator", ""), ("ImagesInAcquisition", str(s.slices)),
        ("SamplesPerPixel", 1), ("PhotometricInterpretation", "MONOCHROME2"), ("Rows", s.matrix),
        ("Columns", s.matrix), ("PixelSpacing", [_ds(s.fov / s.matrix)] * 2), ("BitsAllocated", 16),
        ("BitsStored", 12), ("HighBit", 11), ("PixelRepresentation", 0), ("WindowCenter", "600"),
        ("WindowWidth", "1400"), *((("InversionTime", _ds(s.ti)),) if s.ti is not None else ()),
    )]
    protocol = _csa.siemens_protocol(
        name=s.protocol, sequence=seq_name.strip("*"), matrix=s.matrix, slices=s.slices, thickness=s.spacing,
        fov=s.fov, tr_ms=s.tr, te_ms=s.te, flip=s.flip, volumes=s.volumes, duration_s=s.duration_s,
        shims=shims, three_d=t1, epi=epi, ti_ms=s.ti)
    image_csa = _csa.image_header(
        slice_normal=[float(v) for v in np.cross(*_geometry(s, 0)[1:])],
        slice_duration_ms=s.tr / s.slices if epi else s.tr,
        phase_positive=s.pe_positive, bandwidth_pe=bw_pe, dwell_ns=dwell_ns)
    # "SIEMENS MR HEADER" block: dcm2niix takes DwellTime from (0019,1018)
    els += [(Tag(0x0019, 0x0010), "LO", "SIEMENS MR HEADER"), (Tag(0x0019, 0x1008), "CS", "IMAGE NUM 4"),
            (Tag(0x0019, 0x1009), "LO", "1.0"), (Tag(0x0019, 0x1018), "IS", str(dwell_ns))]
    if bw_pe is not None:
        els.append((Tag(0x0019, 0x1028), "FD", bw_pe))
    els += [(Tag(0x0029, 0x0010), "LO", _csa.CSA_PRIVATE_CREATOR), (Tag(0x0029, 0x1008), "CS", "IMAGE NUM 4"),
            (Tag(0x0029, 0x1009), "LO", "20100114"),
            (Tag(0x0029, 0x1000 + _csa.CSA_IMAGE_ELEMENT), "OB", image_csa),
            (Tag(0x0029, 0x1018), "CS", "MR"), (Tag(0x0029, 0x1019), "LO", "20100114"),
            (Tag(0x0029, 0x1000 + _csa.CSA_SERIES_ELEMENT), "OB", _csa.series_header(protocol))]
    return els


def _shims(spec: StudySpec) -> tuple[int, ...]:
    """One shim state for the session: field maps and runs must share it."""
    rng = np.random.default_rng([spec.seed, 0x5111])
    offsets = [-int(v) for v in rng.integers(500, 5000, size=3)]  # lOffsetX must be != 0
    return (*offsets, *(int(v) for v in rng.integers(-600, 600, size=5)))


def _instance(spec: StudySpec, s: _Series, static: _Elements, number: int, vol: int, k: int, pixels: bytes) -> Dataset:
    """One instance: slice ``k`` of volume ``vol``, the ``number``-th of its series."""
    if s.kind == "scout":
        t_us = s.start_us + k * 4_000_000
    elif s.kind == "t1w":  # a 3D volume has a single acquisition time
        t_us = s.start_us
    else:  # 2D: slice k of volume v is excited at v*TR + k*TR/slices; dcm2niix derives SliceTiming from it
        t_us = s.start_us + round((vol + k / s.slices) * s.tr * 1000)
    centre, row, col = _geometry(s, k)
    ipp = centre - (s.matrix - 1) / 2 * (s.fov / s.matrix) * (row + col)
    sop = _uid(spec, "instance", s.number, number)
    ds = Dataset()
    for tag, vr, value in static:  # validated once per series in generate_study()
        ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
    for keyword, value in (
        ("SOPInstanceUID", sop), ("InstanceCreationTime", _tm(spec, t_us + 2_000_000)),
        ("AcquisitionTime", _tm(spec, t_us)), ("ContentTime", _tm(spec, t_us + 2_000_000)),
        ("AcquisitionNumber", str(vol + 1)), ("InstanceNumber", str(number)),
        ("ImagePositionPatient", [_ds(v) for v in ipp]),
        ("ImageOrientationPatient", [_ds(v) for v in (*row, *col)]),
        ("SliceLocation", _ds(float(np.dot(centre, np.cross(row, col))))),
    ):
        ds.add(DataElement(*_el(keyword, value)))
    ds.add(DataElement(Tag(0x7FE0, 0x0010), "OW", pixels))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID  # fixed, not pydicom's: files must not change
    meta.ImplementationVersionName = "BIDSFLUX_SYNTH"
    ds.file_meta = meta
    return ds


def generate_study(spec: StudySpec) -> Iterator[Dataset]:
    """Yield the study's instances lazily, one at a time, in acquisition order."""
    shims = _shims(spec)
    for s in _plan(spec):
        static = _series_elements(spec, s, shims)
        for tag, vr, value in static:  # fail on a bad spec value before any instance is yielded
            try:
                DataElement(tag, vr, value, validation_mode=config.RAISE)
            except ValueError as exc:
                raise ScannerError(f"invalid value for {tag} ({vr}): {exc}", study=study_uid(spec),
                                   hint="shorten or simplify the StudySpec field") from exc
        rng = np.random.default_rng([spec.seed, s.number])
        epi_slices = [_phantom(s, k) for k in range(s.slices)] if s.kind == "epi" else None
        sigma = 0.015 * _SCALE[s.kind]
        number = 0
        for vol in range(s.volumes):
            gain = 1 + 0.004 * np.sin(2 * np.pi * vol / 37)  # slow scanner drift
            wave = 0.02 * np.sin(2 * np.pi * vol * s.tr / 30_000)  # "resting-state" fluctuation
            for k in range(s.slices):
                number += 1
                base, act = epi_slices[k] if epi_slices else _phantom(s, k)
                noise = rng.standard_normal(base.shape, dtype=np.float32) * sigma
                pixels = np.clip(np.rint(np.abs(base * (gain + wave * act) + noise)), 0, 4095).astype("<u2")
                yield _instance(spec, s, static, number, vol, k, pixels.tobytes())


def write_study(spec: StudySpec, directory: Path) -> list[Path]:
    """Write every instance as a DICOM file (preamble, file meta, explicit VR
    little endian) to ``directory/<NN>-<protocol>/<instance>.dcm``; return the paths."""
    directory = Path(directory)
    paths: list[Path] = []
    try:
        for ds in generate_study(spec):
            folder = directory / f"{int(ds.SeriesNumber):02d}-{ds.ProtocolName}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{int(ds.InstanceNumber):05d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
    except OSError as exc:
        raise ScannerError(f"cannot write study files under {directory}: {exc}", study=study_uid(spec),
                           hint="check that the directory is writable and has free space") from exc
    return paths
