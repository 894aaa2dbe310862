"""SQLite implementation of the ledger (WAL, one lock per connection)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LedgerError
from .states import State

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    group_path TEXT,
    calling_aet TEXT,
    peer TEXT,
    series INTEGER NOT NULL DEFAULT 0,
    instances INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    first_arrival REAL,
    last_arrival REAL,
    completion_reason TEXT,
    error TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    details TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    at REAL NOT NULL,
    counts TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    attempt INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transitions_study ON transitions(study_uid, id);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state);
"""

_COLUMNS = (
    "group_path", "calling_aet", "peer", "series", "instances", "bytes",
    "first_arrival", "last_arrival", "completion_reason",
)


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    state: State
    group_path: str | None
    calling_aet: str | None
    peer: str | None
    series: int
    instances: int
    bytes: int
    first_arrival: float | None
    last_arrival: float | None
    completion_reason: str | None
    error: str | None
    attempt: int
    updated_at: float
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["state"] = str(self.state)
        return data


@dataclass(frozen=True)
class Transition:
    study_uid: str
    from_state: State | None
    to_state: State
    at: float
    counts: dict[str, Any]
    error: str | None
    attempt: int


class Ledger:
    """A thread-safe handle on the ledger database."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row_to_record(self, row: sqlite3.Row | tuple[Any, ...]) -> StudyRecord:
        (uid, state, group_path, aet, peer, series, instances, nbytes, first, last, reason,
         error, attempt, details, updated) = row
        return StudyRecord(
            study_uid=uid, state=State(state), group_path=group_path, calling_aet=aet, peer=peer,
            series=series, instances=instances, bytes=nbytes, first_arrival=first,
            last_arrival=last, completion_reason=reason, error=error, attempt=attempt,
            updated_at=updated, details=json.loads(details),
        )

    _SELECT = (
        "SELECT study_uid, state, group_path, calling_aet, peer, series, instances, bytes, "
        "first_arrival, last_arrival, completion_reason, error, attempt, details, updated_at FROM studies"
    )

    def get(self, study_uid: str) -> StudyRecord | None:
        with self._lock:
            row = self._db.execute(self._SELECT + " WHERE study_uid = ?", (study_uid,)).fetchone()
        return self._row_to_record(row) if row else None

    def require(self, study_uid: str) -> StudyRecord:
        record = self.get(study_uid)
        if record is None:
            raise LedgerError("no such study in the ledger", study=study_uid,
                              hint="`bidsflux status` lists the known studies")
        return record

    def studies(self, states: Iterable[State] | None = None, study_uid: str | None = None) -> list[StudyRecord]:
        query, params = self._SELECT, []
        clauses = []
        if states is not None:
            wanted = [str(s) for s in states]
            clauses.append(f"state IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if study_uid:
            clauses.append("study_uid LIKE ?")
            params.append(study_uid.replace("*", "%") if "*" in study_uid else study_uid)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY first_arrival, study_uid"
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [self._row_to_record(row) for row in rows]

    def transitions(self, study_uid: str) -> list[Transition]:
        with self._lock:
            rows = self._db.execute(
                "SELECT study_uid, from_state, to_state, at, counts, error, attempt FROM transitions "
                "WHERE study_uid = ? ORDER BY id", (study_uid,),
            ).fetchall()
        return [
            Transition(uid, State(frm) if frm else None, State(to), at, json.loads(counts), error, attempt)
            for uid, frm, to, at, counts, error, attempt in rows
        ]

    def transition(
        self,
        study_uid: str,
        to_state: State,
        *,
        counts: dict[str, Any] | None = None,
        error: str | None = None,
        details: dict[str, Any] | None = None,
        attempt: int | None = None,
        **columns: Any,
    ) -> StudyRecord:
        """Move a study to ``to_state`` (creating it if new) and record the transition.

        ``columns`` updates the study's summary columns; ``details`` is merged
        into its JSON details (forge URLs, branch names ...).
        """
        unknown = set(columns) - set(_COLUMNS)
        if unknown:
            raise LedgerError(f"unknown ledger columns {sorted(unknown)}", study=study_uid)
        now = time.time()
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute("SELECT state, details, attempt FROM studies WHERE study_uid = ?",
                                  (study_uid,)).fetchone()
                if row is None:
                    cur.execute("INSERT INTO studies (study_uid, state, updated_at) VALUES (?, ?, ?)",
                                (study_uid, str(to_state), now))
                    from_state, merged, previous_attempt = None, {}, 0
                else:
                    from_state, merged, previous_attempt = row[0], json.loads(row[1]), row[2]
                merged.update(details or {})
                attempt_value = previous_attempt if attempt is None else attempt
                assignments = ["state = ?", "error = ?", "details = ?", "attempt = ?", "updated_at = ?"]
                params: list[Any] = [str(to_state), error, json.dumps(merged, sort_keys=True), attempt_value, now]
                for name, value in columns.items():
                    assignments.append(f"{name} = ?")
                    params.append(value)
                cur.execute(f"UPDATE studies SET {', '.join(assignments)} WHERE study_uid = ?",
                            (*params, study_uid))
                if from_state != str(to_state) or error or counts:
                    cur.execute(
                        "INSERT INTO transitions (study_uid, from_state, to_state, at, counts, error, attempt) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (study_uid, from_state, str(to_state), now, json.dumps(counts or {}, sort_keys=True),
                         error, attempt_value),
                    )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return self.require(study_uid)

    def merge_details(self, study_uid: str, details: dict[str, Any]) -> None:
        """Merge ``details`` into a known study's JSON details without a state change."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute("SELECT details FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
                if row is None:
                    raise LedgerError("no such study in the ledger", study=study_uid)
                merged = json.loads(row[0])
                merged.update(details)
                cur.execute("UPDATE studies SET details = ?, updated_at = ? WHERE study_uid = ?",
                            (json.dumps(merged, sort_keys=True), time.time(), study_uid))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def update(self, study_uid: str, **columns: Any) -> None:
        """Update summary columns without a state change (arrival counters)."""
        unknown = set(columns) - set(_COLUMNS)
        if unknown or not columns:
            raise LedgerError(f"bad ledger update {sorted(columns)}", study=study_uid)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._lock:
            self._db.execute(f"UPDATE studies SET {assignments}, updated_at = ? WHERE study_uid = ?",
                             (*columns.values(), time.time(), study_uid))
