"""The per-study ledger: every study's state and every transition.

Embedded SQLite in WAL mode by default.  ``bidsflux status`` reads it; each
stage writes its outcome here after its durable work is done, so a restart
resumes every study from its last recorded state.
"""

from ._sqlite import Ledger, StudyRecord, Transition
from .states import ACTIVE_STATES, TERMINAL_STATES, State

__all__ = ["ACTIVE_STATES", "TERMINAL_STATES", "Ledger", "State", "StudyRecord", "Transition"]
