"""The header fields indexing needs, read with the assemble stage's tag reader.

One reader for both stages: every top-level keyword tag with a plain value
(no pixel data, no sequences), values bounded in length; an unreadable file
gives no tags, which the index reports as a StudyInstanceUID mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..assemble import read_tags

SERIES_TAGS = ["SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SOPClassUID",
               "ProtocolName"]


def read_series_info(path: Path) -> dict[str, Any]:
    tags = read_tags(path)
    return {key: tags.get(key) for key in SERIES_TAGS}


__all__ = ["SERIES_TAGS", "read_series_info", "read_tags"]
