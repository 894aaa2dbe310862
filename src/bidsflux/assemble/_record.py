"""What a completed batch carries (route.json, batch.json) and what the ledger learns about it.

The ledger gets, per study: calling AE and host, the associations that
carried it, instances and bytes per series, first and last arrival, the
completion reason, the route, every batch (an amendment says so), and the
instances kept aside (conflicts, quarantine) with their reasons.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ledger import Ledger, State, StudyRecord
from ..routing import Route

MAX_LISTED = 50  # associations and batches kept in the details, newest last


@dataclass(frozen=True)
class SeriesCount:
    instances: int
    bytes: int
    first_arrival: float
    last_arrival: float
    description: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"instances": self.instances, "bytes": self.bytes, "description": self.description,
                "first_arrival": self.first_arrival, "last_arrival": self.last_arrival}


def count_series(folder: Path, descriptions: dict[str, str] | None = None) -> dict[str, SeriesCount]:
    """Count what a study folder holds on disk, per series (the truth, not what was reported)."""
    found: dict[str, SeriesCount] = {}
    for series_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        instances = nbytes = 0
        first, last = float("inf"), 0.0
        for item in series_dir.iterdir():
            if item.suffix == ".dcm":
                stat = item.stat()
                instances += 1
                nbytes += stat.st_size
                first, last = min(first, stat.st_mtime), max(last, stat.st_mtime)
        if instances:
            found[series_dir.name] = SeriesCount(instances, nbytes, first, last,
                                                 (descriptions or {}).get(series_dir.name, ""))
    return found


def is_amendment(record: StudyRecord | None) -> bool:
    """Whether a study has had a batch before (an earlier one completed)."""
    return record is not None and bool(record.details.get("batches"))


def batch_files(study: str, route: Route, reason: str, series: dict[str, SeriesCount], *, amendment: bool,
                source: str, associations: list[dict[str, Any]]) -> dict[str, bytes]:
    """route.json and batch.json, written into the batch before it is handed on."""
    info = {
        "study_uid": study, "completed_at": time.time(), "completion_reason": reason, "amendment": amendment,
        "source": source, "rule": route.rule, "series": {uid: c.as_json() for uid, c in series.items()},
        "instances": sum(c.instances for c in series.values()), "bytes": sum(c.bytes for c in series.values()),
        "associations": associations,
    }
    return {"route.json": json.dumps(route.as_json(), indent=1, sort_keys=True).encode(),
            "batch.json": json.dumps(info, indent=1, sort_keys=True).encode()}


def record_completion(ledger: Ledger, study: str, batch_id: str, *, route: Route, reason: str,
                      series: dict[str, SeriesCount], associations: list[dict[str, Any]], source: str,
                      calling_aet: str | None, peer: str | None, first_arrival: float | None,
                      duplicates: int = 0, conflicts: int = 0) -> None:
    previous = ledger.get(study)
    amendment = is_amendment(previous)
    details = previous.details if previous is not None else {}
    merged_series = dict(details.get("series") or {})
    for uid, count in series.items():
        old = merged_series.get(uid)
        entry = count.as_json()
        if old:
            entry.update(instances=old.get("instances", 0) + count.instances, bytes=old.get("bytes", 0) + count.bytes,
                         first_arrival=min(old.get("first_arrival") or count.first_arrival, count.first_arrival),
                         description=count.description or old.get("description", ""))
        merged_series[uid] = entry
    instances = sum(c.instances for c in series.values())
    nbytes = sum(c.bytes for c in series.values())
    last = max((c.last_arrival for c in series.values()), default=time.time())
    first = min((c.first_arrival for c in series.values()), default=last)
    batches = list(details.get("batches") or []) + [{
        "batch": batch_id, "reason": reason, "at": time.time(), "instances": instances, "bytes": nbytes,
        "series": len(series), "amendment": amendment, "source": source}]
    columns: dict[str, Any] = {
        "last_arrival": last, "completion_reason": reason,
        "series": len(merged_series), "instances": sum(e.get("instances", 0) for e in merged_series.values()),
        "bytes": sum(e.get("bytes", 0) for e in merged_series.values()),
    }
    if calling_aet:
        columns["calling_aet"] = calling_aet
    if peer:
        columns["peer"] = peer
    if previous is None or previous.first_arrival is None:
        columns["first_arrival"] = first_arrival if first_arrival is not None else first
    ledger.transition(
        study, State.COMPLETE,
        counts={"batch": batch_id, "series": len(series), "instances": instances, "bytes": nbytes,
                "amendment": amendment, "duplicates": duplicates, "conflicts": conflicts, "rule": route.rule,
                "reason": reason},
        details={"route": route.as_json(), "series": merged_series, "batches": batches[-MAX_LISTED:],
                 "associations": (list(details.get("associations") or []) + associations)[-MAX_LISTED:]},
        **columns,
    )
