"""The session manifest kept in git: what each series archive holds.

One JSON file, ``manifest.json``, sorted and stable so that an identical
resend gives an identical file (and no commit).  ``describe_changes`` gives
the amendment commit message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def hash_uids(uids: list[str]) -> str:
    """Order-independent hash of a series' SOPInstanceUIDs."""
    return hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()


@dataclass(frozen=True)
class SeriesEntry:
    series_uid: str
    number: int | None
    description: str
    modality: str
    sop_class_uid: str
    instances: int
    sop_uids_sha256: str
    archive: str
    annex_key: str
    bytes: int


@dataclass
class Manifest:
    study_uid: str
    series: dict[str, SeriesEntry] = field(default_factory=dict)

    @property
    def instances(self) -> int:
        return sum(entry.instances for entry in self.series.values())

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "StudyInstanceUID": self.study_uid,
            "instances": self.instances,
            "series": [asdict(self.series[uid]) for uid in sorted(
                self.series, key=lambda u: (self.series[u].number or 0, u))],
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        manifest = cls(data["StudyInstanceUID"])
        for item in data["series"]:
            entry = SeriesEntry(**item)
            manifest.series[entry.series_uid] = entry
        return manifest

    @classmethod
    def load(cls, dataset: Path, study_uid: str) -> Manifest:
        path = dataset / MANIFEST_NAME
        return cls.from_json(path.read_text()) if path.exists() else cls(study_uid)


def describe_changes(old: Manifest, new: Manifest) -> list[str]:
    """Human-readable lines saying what an amendment changed."""
    lines = []
    for uid, entry in sorted(new.series.items(), key=lambda kv: (kv[1].number or 0, kv[0])):
        before = old.series.get(uid)
        label = f"series {entry.number} {entry.description!r}"
        if before is None:
            lines.append(f"added {label}: {entry.instances} instances")
        elif before.annex_key != entry.annex_key:
            lines.append(f"changed {label}: {before.instances} -> {entry.instances} instances")
    return lines
