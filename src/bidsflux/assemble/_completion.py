"""When is a study complete?  The decision, apart from the bookkeeping.

In order: a forced maximum since the first instance; the quiet period (no
new instance for that long); then, once no open association carries the
study, its expected series (the route's SeriesDescription regexes) all
present, or, without an expected-series list, the association having ended
a short while ago.  Association end is a hint, not proof: a scanner may send
a study over several associations, and the quiet period still catches a
study whose sender simply stops.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    quiet_period: float
    association_end_quiet: float
    force_after: float


@dataclass(frozen=True)
class Progress:
    """What is known about one receiving study right now."""

    first_arrival: float
    last_arrival: float
    receiving: bool  # an open association has carried it
    association_ended: float | None  # when the last association that carried it ended


def missing_series(expected: Iterable[re.Pattern[str]], descriptions: Iterable[str]) -> list[str]:
    """The expected-series patterns no received series' description matches."""
    received = list(descriptions)
    return [p.pattern for p in expected if not any(p.search(d) for d in received)]


def decide(now: float, progress: Progress, timing: Timing, *, expected: bool, missing: list[str]) -> str | None:
    """The completion reason, or None while the study should wait."""
    if now - progress.first_arrival >= timing.force_after:
        return f"forced after {timing.force_after:g}s since the first instance"
    if now - progress.last_arrival >= timing.quiet_period:
        reason = f"quiet for {timing.quiet_period:g}s"
        return reason + (f"; expected series missing: {', '.join(missing)}" if missing else "")
    if progress.receiving or progress.association_ended is None:
        return None
    if expected:
        return "all expected series received and the association ended" if not missing else None
    since = now - max(progress.association_ended, progress.last_arrival)
    if since >= timing.association_end_quiet:
        return f"association ended {timing.association_end_quiet:g}s ago"
    return None
