"""Stage 2, assemble: decide when a receiving study is complete, route it, hand it on.

Each :meth:`Assembler.tick` looks at every study in ``spool/incoming``:
the routing rules choose its route from its first instance's tags, and the
completion rules (``_completion``) say when it is done.  The whole study
folder is then renamed into ``complete/`` as one batch (atomic, after a
journal checkpoint), with ``route.json`` and ``batch.json`` inside; its
counts are taken from what is on disk, and the ledger says COMPLETE with
the reason.  Instances that arrive later start a new batch: an amendment of
the same session, never a new one.  Studies received before a restart are
picked up from the spool and complete after their quiet period.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..ledger import Ledger
from ..receive import Batch, ReceiveState, Spool, StudyCounters
from ..routing import Route, Rules, rules_from_settings
from ._completion import Progress, Timing, decide, missing_series
from ._harvest import Harvester
from ._import import ImportResult, import_folder
from ._record import SeriesCount, batch_files, count_series, is_amendment, record_completion
from ._tags import first_instance, read_tags, series_description

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["AssembleOptions", "Assembler", "BatchCounts", "ImportResult", "count_batch", "import_folder", "read_tags"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchCounts:
    series: int
    instances: int
    bytes: int


def count_batch(path: Path) -> BatchCounts:
    """Count what a batch holds on disk (the truth, not what was reported)."""
    counts = count_series(path)
    return BatchCounts(len(counts), sum(c.instances for c in counts.values()), sum(c.bytes for c in counts.values()))


@dataclass(frozen=True)
class AssembleOptions:
    """Completion hints and routing; the defaults match the settings' defaults."""

    association_end_quiet: float = 10.0
    force_after: float = 4 * 3600.0
    rules: Rules = field(default_factory=Rules)

    @classmethod
    def from_settings(cls, settings: Settings) -> AssembleOptions:
        """Raises RoutingError, with every problem and its line, for a bad rules file."""
        return cls(settings.association_end_quiet, settings.force_complete_after, rules_from_settings(settings))


@dataclass
class _Study:
    """What the assembler has looked up about one receiving study (cached between ticks)."""

    route: Route | None = None
    descriptions: dict[str, str] = field(default_factory=dict)
    seen_since: float = field(default_factory=time.time)


class Assembler:
    """Completes studies; call :meth:`tick` periodically (the worker loop does)."""

    def __init__(self, spool: Spool, state: ReceiveState, ledger: Ledger, quiet_period: float,
                 *, options: AssembleOptions | None = None):
        self.spool = spool
        self.state = state
        self.ledger = ledger
        self.quiet_period = quiet_period
        self.options = options or AssembleOptions()
        self._timing = Timing(quiet_period, self.options.association_end_quiet, self.options.force_after)
        self._studies: dict[str, _Study] = {}
        self._harvester = Harvester(spool, ledger)

    def tick(self, now: float | None = None) -> list[Batch]:
        completed: list[Batch] = []
        for study_uid in self.spool.receiving_studies():
            try:
                batch = self._consider(study_uid, time.time() if now is None else now)
            except FileNotFoundError:
                continue  # completed or moved meanwhile
            if batch is not None:
                completed.append(batch)
        try:
            self._harvester.run()
        except Exception:  # noqa: BLE001 - bookkeeping must not stop completion
            log.exception("recording kept-aside instances in the ledger failed")
        return completed

    # -- one study
    def _consider(self, study_uid: str, now: float) -> Batch | None:
        info = self._studies.setdefault(study_uid, _Study())
        counters = self.state.snapshot(study_uid)
        folder = self.spool.incoming / study_uid
        if counters is not None:
            progress = Progress(counters.first_arrival, counters.last_arrival, bool(counters.active),
                                counters.last_association_end)
        else:
            # Received before a restart: the files' times are the best evidence.
            last = self.spool.last_change(study_uid)
            record = self.ledger.get(study_uid)
            first = record.first_arrival if record is not None and record.first_arrival else min(last, info.seen_since)
            progress = Progress(first, last, False, None)
        if info.route is None:
            info.route = self._route(folder)
        expected = info.route.expected_series
        missing = missing_series(expected, self._descriptions(folder, info, counters).values()) if expected else []
        reason = decide(now, progress, self._timing, expected=bool(expected), missing=missing)
        if reason is None:
            return None
        return self._complete(study_uid, reason, info, counters)

    def _route(self, folder: Path) -> Route:
        with self.spool.study_lock(folder.name):
            first = first_instance(folder)
            tags = read_tags(first) if first is not None else {}
        return self.options.rules.route(tags)

    def _descriptions(self, folder: Path, info: _Study, counters: StudyCounters | None) -> dict[str, str]:
        for series_dir in folder.iterdir():
            uid = series_dir.name
            if uid in info.descriptions or not series_dir.is_dir():
                continue
            known = counters.series.get(uid) if counters is not None else None
            if known is not None:
                info.descriptions[uid] = known.description
            else:
                with self.spool.study_lock(folder.name):
                    info.descriptions[uid] = series_description(series_dir)
        return info.descriptions

    def _complete(self, study_uid: str, reason: str, info: _Study, counters: StudyCounters | None) -> Batch:
        route = info.route or self.options.rules.default
        previous = self.ledger.get(study_uid)
        associations = [a.as_json() for a in counters.associations.values()] if counters else []
        counted: dict[str, dict[str, SeriesCount]] = {}

        def add_files(folder: Path) -> dict[str, bytes]:
            descriptions = dict(info.descriptions)
            for series_dir in folder.iterdir():
                if series_dir.is_dir() and series_dir.name not in descriptions:
                    descriptions[series_dir.name] = series_description(series_dir)
            counted["series"] = count_series(folder, descriptions)
            return batch_files(study_uid, route, reason, counted["series"], amendment=is_amendment(previous),
                               source="dicom", associations=associations)

        batch = self.spool.complete_study(study_uid, add_files)
        self.state.pop(study_uid)
        self._studies.pop(study_uid, None)
        series = counted["series"]
        record_completion(
            self.ledger, study_uid, batch.batch_id, route=route, reason=reason, series=series,
            associations=associations, source="dicom",
            calling_aet=counters.calling_aet if counters else None, peer=counters.peer if counters else None,
            first_arrival=counters.first_arrival if counters else None,
            duplicates=counters.duplicates if counters else 0, conflicts=counters.conflicts if counters else 0)
        self._harvester.run()
        log.info("study complete (%s): %d series, %d instances; route %s%s", reason, len(series),
                 sum(c.instances for c in series.values()), route.rule, " (ignore)" if route.ignore else "",
                 extra={"study_uid": study_uid})
        return batch
