"""Study states, defined once, in pipeline order."""

from __future__ import annotations

import enum


class State(str, enum.Enum):
    RECEIVING = "RECEIVING"
    COMPLETE = "COMPLETE"
    INDEXED = "INDEXED"
    STORED = "STORED"
    PUBLISHED = "PUBLISHED"
    CONVERTING = "CONVERTING"
    CONVERTED = "CONVERTED"
    VALIDATED = "VALIDATED"
    MERGED = "MERGED"
    QUARANTINED = "QUARANTINED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset({State.MERGED, State.QUARANTINED, State.FAILED})
ACTIVE_STATES = frozenset(State) - TERMINAL_STATES
