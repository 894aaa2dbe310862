"""The tags routing and expected-series checks need, read from a study's first instances.

The one place pydicom is used in this stage.  Values a hostile sender put
in are only ever matched against regular expressions or written into JSON,
never used as paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.valuerep import PersonName

_SKIP_VRS = ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN")
_MAX = 4096


def _plain(element: DataElement) -> Any:
    value = element.value
    if isinstance(value, PersonName):
        return str(value)[:_MAX]
    if isinstance(value, str):
        return value[:_MAX]
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if all(isinstance(v, (str, int, float, PersonName)) for v in value):
            return "\\".join(str(v) for v in value)[:_MAX]
    return None


def read_tags(path: Path) -> dict[str, Any]:
    """Every top-level keyword tag with a plain value (no pixel data, no sequences); {} if unreadable."""
    try:
        with open(path, "rb") as handle:
            if handle.read(132)[128:] != b"DICM":
                return {}  # only Part 10 files reach a study folder; anything else routes by default
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - a file that cannot be read routes by the default rule
        return {}
    tags: dict[str, Any] = {}
    for element in ds:
        try:
            if not element.keyword or element.VR in _SKIP_VRS:
                continue
            value = _plain(element)
        except Exception:  # noqa: BLE001 - a malformed value is skipped, the rest is used
            continue
        if value is not None:
            tags[element.keyword] = value
    return tags


def first_instance(folder: Path) -> Path | None:
    """The first instance (by name) of the first series folder that has one."""
    for series_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(series_dir.glob("*.dcm")):
            return path
    return None


def series_description(series_dir: Path) -> str:
    for path in sorted(series_dir.glob("*.dcm")):
        return str(read_tags(path).get("SeriesDescription", ""))
    return ""
