"""Putting FAILED and QUARANTINED studies back to work (`retry`, `quarantine release`).

Nothing here processes a study: it moves the study's kept batches back into
the queue, or sets the study back to the last state it reached before it
failed, and the worker (``bidsflux serve``) takes it from there.  A MERGED
study whose routed derivatives failed gets those derivatives pending again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .derive.routed import FAILED, PENDING
from .errors import UsageError
from .ledger import Ledger, State, StudyRecord
from .settings import Settings

KEPT_FOLDERS = ("failed", "quarantine")
_NOT_A_RESUME_POINT = {State.FAILED, State.QUARANTINED, State.RECEIVING, State.CONVERTING}


@dataclass(frozen=True)
class Requeued:
    study_uid: str
    state: State
    batches: int
    derivatives: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.derivatives:
            return (f"study {self.study_uid}: derivative(s) {', '.join(self.derivatives)} pending again; "
                    "the worker runs them")
        if self.batches:
            return f"study {self.study_uid}: {self.batches} batch(es) back in the queue ({self.state})"
        return f"study {self.study_uid}: back to {self.state}; the worker resumes it from there"


def kept_batches(settings: Settings, study: str) -> list[Path]:
    found = []
    for folder in KEPT_FOLDERS:
        found.extend(sorted((settings.spool_dir / folder).glob(f"{study}@*")))
    return found


def requeue(settings: Settings, ledger: Ledger, study: str, *, only: State | None = None) -> Requeued:
    """Put a FAILED or QUARANTINED study back where the worker will pick it up.

    A MERGED study (unless ``only`` is given) gets its failed derivatives pending again.
    """
    record = ledger.require(study)
    if record.state is State.MERGED and only is None:
        return _requeue_derivatives(ledger, record)
    allowed = {only} if only else {State.FAILED, State.QUARANTINED}
    if record.state not in allowed:
        wanted = " or ".join(sorted(str(s) for s in allowed))
        raise UsageError(f"the study is {record.state}, not {wanted}", study=study,
                         hint="`bidsflux status --study UID` shows its history")
    batches = kept_batches(settings, study)
    if batches:
        complete = settings.spool_dir / "complete"
        complete.mkdir(parents=True, exist_ok=True)
        for path in batches:
            (path / "reason.json").unlink(missing_ok=True)
            os.rename(path, complete / path.name)
        ledger.transition(study, State.COMPLETE, attempt=0, counts={"requeued_batches": len(batches)})
        return Requeued(study, State.COMPLETE, len(batches))
    resume = _last_good_state(ledger, record)
    ledger.transition(study, resume, attempt=0, counts={"requeued": True})
    return Requeued(study, resume, 0)


def _requeue_derivatives(ledger: Ledger, record: StudyRecord) -> Requeued:
    derivatives = record.details.get("derivatives")
    failed = sorted(name for name, entry in (derivatives.items() if isinstance(derivatives, dict) else ())
                    if isinstance(entry, dict) and entry.get("status") in (FAILED, "skipped"))
    if not failed:
        raise UsageError("the study is MERGED and none of its derivatives failed: nothing to retry",
                         study=record.study_uid, hint="`bidsflux status --history --study UID` shows them")
    assert isinstance(derivatives, dict)
    ledger.merge_details(record.study_uid, {"derivatives": {
        **derivatives, **{name: {"status": PENDING, "retried": True} for name in failed}}})
    return Requeued(record.study_uid, State.MERGED, 0, tuple(failed))


def _last_good_state(ledger: Ledger, record: StudyRecord) -> State:
    for transition in reversed(ledger.transitions(record.study_uid)):
        if transition.to_state not in _NOT_A_RESUME_POINT and transition.error is None:
            if transition.to_state is State.COMPLETE:
                break  # its batch is gone: nothing left to index
            if transition.to_state is State.VALIDATED or transition.to_state is State.MERGED:
                return State.PUBLISHED  # convert again
            return transition.to_state
    raise UsageError("nothing to retry: the study's batch is not kept anywhere and no later stage was reached",
                     study=record.study_uid, hint="send the study again")
