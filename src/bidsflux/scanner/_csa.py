"""Writer for Siemens CSA2 ("SV10") private headers and their ASCCONV protocol.

Siemens scanners store acquisition details that have no public DICOM tag in
two binary blobs in private group 0029 (creator ``SIEMENS CSA HEADER``):
(0029,1010) *CSA Image Header Info* and (0029,1020) *CSA Series Header Info*.
Converters depend on them: dcm2niix reads ``PhaseEncodingDirectionPositive``
and ``BandwidthPerPixelPhaseEncode`` from the image header, and ``ShimSetting``
from the ``MrPhoenixProtocol`` element of the series header, an ASCCONV text
block.  heudiconv's ReproIn heuristic matches field maps to runs by that
``ShimSetting``, so without these blobs no ``IntendedFor`` can be filled in.

Layout (little endian), as read by ``nibabel.nicom.csareader`` and by
dcm2niix's ``readCSAImageHeader``::

    b"SV10" b"\\x04\\x03\\x02\\x01" uint32 n_tags  uint32 77
    per tag:  char name[64]  int32 vm  char vr[4]  int32 syngodt
              int32 n_items  int32 77 (205 when vm == 0)
    per item: int32 len  int32 len  int32 77  int32 len
              len bytes (value + NUL), zero-padded to a multiple of 4

Like syngo, every non-empty tag carries at least six items, unused ones empty:
dcm2niix reads a fixed three items for some tags (SliceMeasurementDuration,
ImaRelTablePosition, ...) and would otherwise parse the next tag as an item.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

CSA_PRIVATE_CREATOR = "SIEMENS CSA HEADER"
#: element offsets inside the private block reserved by CSA_PRIVATE_CREATOR
CSA_IMAGE_ELEMENT = 0x10
CSA_SERIES_ELEMENT = 0x20

_MAGIC = b"SV10\x04\x03\x02\x01"
_DELIMITER = 77  # Siemens writes 77 after counts; dcm2niix checks the header one
_EMPTY_TAG = 205
_MIN_ITEMS = 6
_EMPTY_ITEM = struct.pack("<4i", 0, 0, _DELIMITER, 0)
# syngo data-type codes as found in scanner output; nibabel and dcm2niix ignore them.
_SYNGO_DT = {"DS": 3, "FD": 4, "FL": 5, "IS": 6, "SL": 7, "SS": 8, "UL": 9, "US": 10,
             "CS": 16, "LO": 19, "LT": 20, "SH": 22, "ST": 23, "UI": 25, "UN": 27}

#: one CSA element: (name, VR, values); values are rendered with str()
CsaElement = tuple[str, str, Sequence[object]]


def _item(value: object) -> bytes:
    """Encode one item; the NUL is part of the length because dcm2niix calls
    atof() on exactly ``len`` bytes and would read past an unterminated value."""
    data = _render(value).encode("latin-1") + b"\x00"
    length = len(data)
    pad = b"\x00" * (-length % 4)
    return struct.pack("<4i", length, length, _DELIMITER, length) + data + pad


def _render(value: object) -> str:
    # Siemens prints decimal strings with eight fraction digits.
    if isinstance(value, float):
        return f"{value:.8f}"
    return str(value)


def encode_csa2(elements: Iterable[CsaElement]) -> bytes:
    """Return a CSA2 blob holding ``elements`` in the given order."""
    body: list[bytes] = []
    count = 0
    for name, vr, values in elements:
        raw_name = name.encode("ascii")
        if len(raw_name) >= 64:
            raise ValueError(f"CSA element name too long: {name!r}")
        if len(vr) > 4:
            raise ValueError(f"CSA VR too long: {vr!r}")
        vm = len(values)
        n_items = max(vm, _MIN_ITEMS) if vm else 0  # an empty tag has no items at all
        body.append(
            struct.pack(
                "<64si4s3i",
                raw_name,
                vm,
                vr.encode("ascii"),
                _SYNGO_DT.get(vr, 0),
                n_items,
                _DELIMITER if vm else _EMPTY_TAG,
            )
        )
        body.extend(_item(value) for value in values)
        body.append(_EMPTY_ITEM * (n_items - vm))
        count += 1
    if not 0 < count <= 128:  # dcm2niix rejects image headers with > 128 tags
        raise ValueError(f"a CSA header needs 1..128 elements, got {count}")
    return _MAGIC + struct.pack("<2I", count, _DELIMITER) + b"".join(body)


def _ascconv_value(value: object) -> str:
    """Render a value the way syngo's ASCCONV does: strings in doubled quotes
    (dcmstack's parser requires exactly that), floats without exponent."""
    if isinstance(value, str):
        return f'""{value}""'
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def ascconv(entries: Iterable[tuple[str, object]]) -> str:
    """Return an ASCCONV block (the text of ``MrPhoenixProtocol``).

    Every key starts at column 0 and is followed by `` = value``; readers
    (dcm2niix, dcmstack) search for the key text and parse to end of line.
    """
    lines = ["### ASCCONV BEGIN ###"]
    lines.extend(f"{key:<40} = {_ascconv_value(value)}" for key, value in entries)
    lines.append("### ASCCONV END ###")
    return "\n".join(lines) + "\n"


def siemens_protocol(
    *,
    name: str,
    sequence: str,
    matrix: int,
    slices: int,
    thickness: float,
    fov: float,
    tr_ms: float,
    te_ms: float,
    flip: float,
    volumes: int,
    duration_s: int,
    shims: Sequence[int],
    three_d: bool = False,
    epi: bool = False,
    ti_ms: float | None = None,
) -> list[tuple[str, object]]:
    """ASCCONV entries of a VE11 protocol, limited to what converters read.

    ``shims`` are the eight values dcm2niix reports as ``ShimSetting``
    (lOffsetX/Y/Z then alShimCurrent[0..4]); lOffsetX must be non-zero or
    dcm2niix omits the field and heudiconv cannot match field maps to runs.
    """
    if len(shims) != 8 or not shims[0]:
        raise ValueError("need 8 shim values with a non-zero lOffsetX")
    entries: list[tuple[str, object]] = [
        ("ulVersion", 51130001),
        ("tSequenceFileName", "%SiemensSeq%\\" + sequence),
        ("tProtocolName", name),
        ("sProtConsistencyInfo.tBaselineString", "N4_VE11C_LATEST_20160120"),
        ("sProtConsistencyInfo.flNominalB0", 2.89362),
        ("asCoilSelectMeas[0].asList[0].sCoilElementID.tCoilID", "HeadNeck_20"),
        ("sCoilSelectMeas.sCoilStringForConversion", "HC1-7;NC1,2"),
        ("ucCoilCombineMode", 2),
        *((f"sGRADSPEC.asGPAData[0].lOffset{axis}", shims[i]) for i, axis in enumerate("XYZ")),
        *((f"sGRADSPEC.alShimCurrent[{i}]", shims[3 + i]) for i in range(5)),
        ("sTXSPEC.asNucleusInfo[0].tNucleus", "1H"),
        ("sTXSPEC.asNucleusInfo[0].lFrequency", 123251815),
        ("sTXSPEC.asNucleusInfo[0].flReferenceAmplitude", 243.2),
        ("sKSpace.ucDimension", 4 if three_d else 2),
        ("sKSpace.lBaseResolution", matrix),
        ("sKSpace.lPhaseEncodingLines", matrix),
        ("sKSpace.dPhaseResolution", 1.0),
        ("sSliceArray.lSize", 1 if three_d else slices),  # a 3D slab is one "slice"
        ("sSliceArray.ucMode", 1),  # ascending, matching the AcquisitionTimes
        ("sSliceArray.asSlice[0].dThickness", thickness * slices if three_d else thickness),
        ("sSliceArray.asSlice[0].dPhaseFOV", fov),
        ("sSliceArray.asSlice[0].dReadoutFOV", fov),
        ("alTR[0]", round(tr_ms * 1000)),
        ("alTE[0]", round(te_ms * 1000)),
        ("lContrasts", 1),
        ("lRepetitions", volumes - 1),
        ("lTotalScanTimeSec", duration_s),
        ("lDelayTimeInTR", 0),
        ("sPat.lAccelFactPE", 1),
        ("sPat.ucPATMode", 1),
        ("adFlipAngleDegree[0]", flip),
    ]
    if ti_ms is not None:
        entries.append(("alTI[0]", round(ti_ms * 1000)))
    if epi:
        entries += [("sFastImaging.lEPIFactor", matrix), ("sFastImaging.lEchoSpacing", 540)]
    return entries


def series_header(protocol: Iterable[tuple[str, object]]) -> bytes:
    """CSA *series* header whose ``MrPhoenixProtocol`` is the given protocol."""
    return encode_csa2(
        [
            ("UsedPatientWeight", "DS", [70.0]),
            ("NumberOfPrescans", "IS", [0]),
            ("TransmitterCalibration", "DS", [243.2]),
            ("PhaseGradientAmplitude", "DS", [0.0]),
            ("ReadoutGradientAmplitude", "DS", [0.0]),
            ("SelectionGradientAmplitude", "DS", [0.0]),
            ("GradientDelayTime", "DS", [12.0, 14.0, 10.0]),
            ("SARMostCriticalAspect", "DS", [2.0, 0.5, 0.0]),
            ("CoilForGradient2", "SH", ["AS82"]),
            ("MrPhoenixProtocol", "UN", [ascconv(protocol)]),
        ]
    )


def image_header(
    *,
    slice_normal: Sequence[float],
    slice_duration_ms: float,
    phase_positive: int | None = None,
    bandwidth_pe: float | None = None,
    dwell_ns: int = 2600,
    ice_dims: str = "X_1_1_1_1_1_1_1_1_1_1_1_1",
) -> bytes:
    """CSA *image* header with the fields dcm2niix reads for non-mosaic data.

    ``phase_positive`` is ``PhaseEncodingDirectionPositive``: 1 for an
    anterior-to-posterior (``j-``) and 0 for a posterior-to-anterior (``j``)
    column-direction readout; ``None`` leaves polarity unknown (3D scans).
    """
    elements: list[CsaElement] = [
        ("EchoLinePosition", "IS", [32]),
        ("UsedChannelMask", "UL", [255]),
        ("ICE_Dims", "LO", [ice_dims]),
        ("SliceMeasurementDuration", "DS", [float(slice_duration_ms)]),
        ("SliceNormalVector", "FD", [float(v) for v in slice_normal]),
        ("ImaAbsTablePosition", "SL", [0, 0, -1250]),
        ("ImaRelTablePosition", "IS", [0, 0, 0]),
        ("RealDwellTime", "IS", [int(dwell_ns)]),
        ("ImaCoilString", "LO", ["HEA;HEP"]),
    ]
    if bandwidth_pe is not None:
        elements.append(("BandwidthPerPixelPhaseEncode", "FD", [float(bandwidth_pe)]))
    if phase_positive is not None:
        elements.append(("PhaseEncodingDirectionPositive", "IS", [int(phase_positive)]))
    return encode_csa2(elements)
