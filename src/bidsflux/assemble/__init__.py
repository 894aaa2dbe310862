"""Stage 2, assemble: decide when a receiving study is complete.

A study is complete once no instance has arrived for the quiet period.  The
whole study folder is then renamed into ``complete/`` as one batch (atomic),
its counts are taken from what is on disk, and the ledger says COMPLETE.
Instances that arrive later start a new batch: an amendment of the same
session, never a new one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..ledger import Ledger, State
from ..receive import Batch, ReceiveState, Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchCounts:
    series: int
    instances: int
    bytes: int


def count_batch(path: Path) -> BatchCounts:
    """Count what a batch holds on disk (the truth, not what was reported)."""
    series = instances = nbytes = 0
    for series_dir in path.iterdir():
        if not series_dir.is_dir():
            continue
        series += 1
        for item in series_dir.iterdir():
            if item.suffix == ".dcm":
                instances += 1
                nbytes += item.stat().st_size
    return BatchCounts(series, instances, nbytes)


class Assembler:
    """Completes studies after a quiet period; call :meth:`tick` periodically."""

    def __init__(self, spool: Spool, state: ReceiveState, ledger: Ledger, quiet_period: float):
        self.spool = spool
        self.state = state
        self.ledger = ledger
        self.quiet_period = quiet_period
        self._recovered: dict[str, float] = {}

    def _last_arrival(self, study_uid: str) -> float:
        with self.state.lock:
            counters = self.state.studies.get(study_uid)
            if counters is not None:
                return counters.last_arrival
        # Received before a restart: its files' times are the best evidence.
        if study_uid not in self._recovered:
            self._recovered[study_uid] = self.spool.last_change(study_uid)
        return self._recovered[study_uid]

    def tick(self, now: float | None = None) -> list[Batch]:
        now = time.time() if now is None else now
        completed: list[Batch] = []
        for study_uid in self.spool.receiving_studies():
            last = self._last_arrival(study_uid)
            if now - last < self.quiet_period:
                continue
            counters = self.state.pop(study_uid)
            self._recovered.pop(study_uid, None)
            batch = self.spool.complete_study(study_uid)
            counts = count_batch(batch.path)
            previous = self.ledger.get(study_uid)
            amendment = previous is not None and previous.state not in (State.RECEIVING,)
            reason = f"quiet for {self.quiet_period:g}s"
            columns = {
                "last_arrival": last,
                "completion_reason": reason,
            }
            if counters is not None:
                columns.update(calling_aet=counters.calling_aet, peer=counters.peer)
            if previous is None or previous.first_arrival is None:
                columns["first_arrival"] = counters.first_arrival if counters else last
            self.ledger.transition(
                study_uid, State.COMPLETE,
                counts={"batch": batch.batch_id, "series": counts.series, "instances": counts.instances,
                        "bytes": counts.bytes, "amendment": amendment,
                        "duplicates": counters.duplicates if counters else 0,
                        "conflicts": counters.conflicts if counters else 0},
                **columns,
            )
            log.info("study complete (%s): %d series, %d instances", reason, counts.series,
                     counts.instances, extra={"study_uid": study_uid})
            completed.append(batch)
        return completed
