"""Reading the few header fields indexing needs (the one pydicom user here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.valuerep import PersonName

SERIES_TAGS = ["SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SOPClassUID",
               "ProtocolName"]


def _plain(element: DataElement) -> Any:
    value = element.value
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if all(isinstance(v, (str, int, float)) for v in value):
            return "\\".join(str(v) for v in value)
    return None


def read_tags(path: Path) -> dict[str, Any]:
    """Every top-level keyword tag with a plain value (no pixel data, no sequences)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    tags: dict[str, Any] = {}
    for element in ds:
        if not element.keyword or element.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "UN"):
            continue
        try:
            value = _plain(element)
        except Exception:  # noqa: BLE001 - a malformed value is skipped, the rest is used
            continue
        if value is not None:
            tags[element.keyword] = value
    return tags


def read_series_info(path: Path) -> dict[str, Any]:
    tags = read_tags(path)
    return {key: tags.get(key) for key in SERIES_TAGS}
