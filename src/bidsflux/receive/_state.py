"""What the endpoint has received so far in this process, shared with the assembler.

Counters per study (per series, per association) are kept in memory for the
ledger and for completion hints (which associations still carry a study,
when the last one ended).  They are a record, not the truth: what is on disk
in the spool is counted again when a study completes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from .spool import StoreOutcome


@dataclass
class AssociationRecord:
    """One association, as the ledger shows it."""

    id: int
    calling_aet: str
    peer: str
    tls: bool = False
    started: float = field(default_factory=time.time)
    ended: float | None = None
    released: bool = False  # ended with A-RELEASE, not an abort or a broken connection
    instances: int = 0
    bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "calling_aet": self.calling_aet, "peer": self.peer, "tls": self.tls,
                "started": self.started, "ended": self.ended, "released": self.released,
                "instances": self.instances, "bytes": self.bytes}


@dataclass
class SeriesCounters:
    instances: int = 0
    bytes: int = 0
    description: str = ""
    modality: str = ""
    first_arrival: float = field(default_factory=time.time)
    last_arrival: float = field(default_factory=time.time)


@dataclass
class StudyCounters:
    """What one study has received so far in this process."""

    calling_aet: str
    peer: str
    instances: int = 0
    bytes: int = 0
    series: dict[str, SeriesCounters] = field(default_factory=dict)
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    first_arrival: float = field(default_factory=time.time)
    last_arrival: float = field(default_factory=time.time)
    associations: dict[int, AssociationRecord] = field(default_factory=dict)  # this study's share of each
    active: set[int] = field(default_factory=set)  # open associations that carried this study
    last_association_end: float | None = None

    def copy(self) -> StudyCounters:
        return replace(self, series={k: replace(v) for k, v in self.series.items()},
                       associations={k: replace(v) for k, v in self.associations.items()}, active=set(self.active))


class ReceiveState:
    """Shared between the endpoint's association threads and the assembler."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.studies: dict[str, StudyCounters] = {}
        self.active_associations = 0
        self.refused_associations = 0
        self._next_id = 0

    def association_opened(self, calling_aet: str, peer: str, tls: bool) -> AssociationRecord:
        with self.lock:
            self._next_id += 1
            self.active_associations += 1
            return AssociationRecord(self._next_id, calling_aet, peer, tls)

    def association_closed(self, record: AssociationRecord, *, released: bool) -> None:
        """The association ended: the studies it carried may now be complete (a hint)."""
        now = time.time()
        with self.lock:
            self.active_associations -= 1
            record.ended, record.released = now, released
            for counters in self.studies.values():
                share = counters.associations.get(record.id)
                if share is not None:
                    share.ended, share.released = now, released
                if record.id in counters.active:
                    counters.active.discard(record.id)
                    counters.last_association_end = now

    def record(self, study_uid: str, series_uid: str, size: int, outcome: StoreOutcome,
               association: AssociationRecord, *, description: str = "", modality: str = "") -> bool:
        """Count one instance; returns True when the study is new to this process."""
        now = time.time()
        with self.lock:
            counters = self.studies.get(study_uid)
            is_new = counters is None
            if counters is None:
                counters = self.studies[study_uid] = StudyCounters(association.calling_aet, association.peer)
            counters.last_arrival = now
            counters.active.add(association.id)
            share = counters.associations.get(association.id)
            if share is None:
                share = counters.associations[association.id] = replace(association, instances=0, bytes=0)
            if outcome is StoreOutcome.STORED:
                counters.instances += 1
                counters.bytes += size
                share.instances += 1
                share.bytes += size
                association.instances += 1
                association.bytes += size
                series = counters.series.get(series_uid)
                if series is None:
                    series = counters.series[series_uid] = SeriesCounters(description=description,
                                                                          modality=modality)
                series.instances += 1
                series.bytes += size
                series.last_arrival = now
            elif outcome is StoreOutcome.DUPLICATE:
                counters.duplicates += 1
            else:
                counters.conflicts += 1
        return is_new

    def snapshot(self, study_uid: str) -> StudyCounters | None:
        with self.lock:
            counters = self.studies.get(study_uid)
            return counters.copy() if counters is not None else None

    def pop(self, study_uid: str) -> StudyCounters | None:
        with self.lock:
            return self.studies.pop(study_uid, None)
