"""The SQLite ledger: states, transitions, filters, durability and threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bidsflux.errors import LedgerError
from bidsflux.ledger import ACTIVE_STATES, TERMINAL_STATES, Ledger, State

A = "1.2.826.0.1.1"
B = "1.2.826.0.1.2"
C = "1.3.999.7"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    handle = Ledger(tmp_path / "state" / "ledger.sqlite")
    yield handle
    handle.close()


def test_states_split_into_active_and_terminal() -> None:
    assert TERMINAL_STATES == {State.MERGED, State.QUARANTINED, State.FAILED}
    assert ACTIVE_STATES | TERMINAL_STATES == set(State)
    assert not ACTIVE_STATES & TERMINAL_STATES
    assert str(State.RECEIVING) == "RECEIVING"


def test_new_study_records_transitions_in_order(ledger: Ledger) -> None:
    first = ledger.transition(A, State.RECEIVING, calling_aet="SCANNER", peer="127.0.0.1", first_arrival=10.0)
    assert first.state is State.RECEIVING
    assert first.calling_aet == "SCANNER"
    ledger.transition(A, State.COMPLETE, counts={"instances": 3}, completion_reason="quiet")
    ledger.transition(A, State.FAILED, error="disk full", attempt=1)
    final = ledger.transition(A, State.INDEXED, counts={"series": 2}, group_path="Doe-Jane/Demo",
                              details={"dataset": "/d"})

    steps = ledger.transitions(A)
    assert [(t.from_state, t.to_state) for t in steps] == [
        (None, State.RECEIVING),
        (State.RECEIVING, State.COMPLETE),
        (State.COMPLETE, State.FAILED),
        (State.FAILED, State.INDEXED),
    ]
    assert [t.counts for t in steps] == [{}, {"instances": 3}, {}, {"series": 2}]
    assert [t.error for t in steps] == [None, None, "disk full", None]
    assert [t.attempt for t in steps] == [0, 0, 1, 1]
    assert all(t.study_uid == A for t in steps)
    assert [t.at for t in steps] == sorted(t.at for t in steps)

    assert final.state is State.INDEXED
    assert final.error is None  # a later success clears the error
    assert final.attempt == 1
    assert final.group_path == "Doe-Jane/Demo"
    assert final.completion_reason == "quiet"
    assert final.calling_aet == "SCANNER"
    assert final.details == {"dataset": "/d"}
    assert ledger.require(A) == final


def test_details_are_merged(ledger: Ledger) -> None:
    ledger.transition(A, State.INDEXED, details={"dataset": "/d", "commit": "abc"})
    record = ledger.transition(A, State.PUBLISHED, details={"commit": "def", "url": "http://x"})
    assert record.details == {"dataset": "/d", "commit": "def", "url": "http://x"}


def test_same_state_without_news_records_no_transition(ledger: Ledger) -> None:
    ledger.transition(A, State.RECEIVING)
    ledger.transition(A, State.RECEIVING)
    ledger.transition(A, State.RECEIVING, counts={"instances": 5})
    assert len(ledger.transitions(A)) == 2


def test_transitions_of_unknown_study_are_empty(ledger: Ledger) -> None:
    assert ledger.transitions("9.9.9") == []


def test_update_changes_columns_without_a_transition(ledger: Ledger) -> None:
    ledger.transition(A, State.RECEIVING)
    ledger.update(A, instances=12, bytes=3400, series=2, last_arrival=99.5)
    record = ledger.require(A)
    assert (record.instances, record.bytes, record.series, record.last_arrival) == (12, 3400, 2, 99.5)
    assert record.state is State.RECEIVING
    assert len(ledger.transitions(A)) == 1


def test_get_and_require_unknown(ledger: Ledger) -> None:
    assert ledger.get("4.5.6") is None
    with pytest.raises(LedgerError) as caught:
        ledger.require("4.5.6")
    assert caught.value.study == "4.5.6"
    assert "4.5.6" in str(caught.value)


def test_unknown_columns_are_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="bogus"):
        ledger.transition(A, State.RECEIVING, bogus=1)
    assert ledger.get(A) is None  # nothing written
    ledger.transition(A, State.RECEIVING)
    with pytest.raises(LedgerError, match="state"):
        ledger.update(A, state="MERGED")
    with pytest.raises(LedgerError):
        ledger.update(A)
    assert ledger.require(A).state is State.RECEIVING


def test_column_names_cannot_inject_sql(ledger: Ledger) -> None:
    ledger.transition(A, State.RECEIVING)
    with pytest.raises(LedgerError):
        ledger.update(A, **{"instances = 1, state = 'MERGED' --": 0})
    assert ledger.require(A).state is State.RECEIVING


def test_studies_filters_by_state_and_uid(ledger: Ledger) -> None:
    ledger.transition(A, State.RECEIVING, first_arrival=1.0)
    ledger.transition(B, State.RECEIVING, first_arrival=2.0)
    ledger.transition(B, State.MERGED)
    ledger.transition(C, State.FAILED, error="x", first_arrival=3.0)

    assert [r.study_uid for r in ledger.studies()] == [A, B, C]
    assert [r.study_uid for r in ledger.studies([State.RECEIVING])] == [A]
    assert [r.study_uid for r in ledger.studies(TERMINAL_STATES)] == [B, C]
    assert ledger.studies([State.CONVERTING]) == []
    assert ledger.studies([]) == []
    assert [r.study_uid for r in ledger.studies(study_uid=B)] == [B]
    assert [r.study_uid for r in ledger.studies(study_uid="1.2.826.*")] == [A, B]
    assert [r.study_uid for r in ledger.studies(study_uid="*.7")] == [C]
    assert [r.study_uid for r in ledger.studies([State.MERGED], study_uid="1.2.*")] == [B]
    assert ledger.studies(study_uid="1.2.826") == []  # no wildcard: exact
    assert ledger.studies(study_uid="7.7.*") == []


def test_record_as_json(ledger: Ledger) -> None:
    ledger.transition(A, State.QUARANTINED, error="bad name", details={"why": "naming"})
    data = ledger.require(A).as_json()
    assert data["state"] == "QUARANTINED"
    assert data["study_uid"] == A
    assert data["details"] == {"why": "naming"}


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    first = Ledger(path)
    first.transition(A, State.RECEIVING, counts={"n": 1})
    first.transition(A, State.COMPLETE, completion_reason="quiet")
    first.transition(B, State.FAILED, error="boom", attempt=2)
    before = (first.studies(), first.transitions(A), first.transitions(B))
    first.close()

    second = Ledger(path)
    try:
        assert (second.studies(), second.transitions(A), second.transitions(B)) == before
        assert second.require(B).error == "boom"
        second.transition(A, State.INDEXED)
    finally:
        second.close()

    third = Ledger(path)
    try:
        assert [t.to_state for t in third.transitions(A)] == [State.RECEIVING, State.COMPLETE, State.INDEXED]
    finally:
        third.close()


def test_second_handle_sees_writes_without_close(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    writer, reader = Ledger(path), Ledger(path)
    try:
        writer.transition(A, State.STORED)
        assert reader.require(A).state is State.STORED
    finally:
        writer.close()
        reader.close()


def test_unopenable_path_is_a_ledger_error(tmp_path: Path) -> None:
    folder = tmp_path / "is-a-folder"
    folder.mkdir()
    with pytest.raises(LedgerError):
        Ledger(folder)


def test_concurrent_transitions_from_threads(ledger: Ledger, tmp_path: Path) -> None:
    uids = [f"1.2.3.{n}" for n in range(8)]
    steps = [State.RECEIVING, State.COMPLETE, State.INDEXED, State.STORED, State.PUBLISHED]
    start = threading.Barrier(len(uids))
    errors: list[BaseException] = []

    def work(uid: str) -> None:
        try:
            start.wait()
            for round_ in range(5):
                for state in steps:
                    ledger.transition(uid, state, counts={"round": round_})
                ledger.update(uid, instances=round_)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(uid,)) for uid in uids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    assert sorted(r.study_uid for r in ledger.studies()) == uids
    for uid in uids:
        record = ledger.require(uid)
        assert record.state is State.PUBLISHED
        assert record.instances == 4
        steps_seen = ledger.transitions(uid)
        assert len(steps_seen) == 25
        assert [t.to_state for t in steps_seen] == steps * 5
        assert [t.counts["round"] for t in steps_seen] == [r for r in range(5) for _ in steps]
    # and everything is on disk for another handle
    other = Ledger(ledger.path)
    try:
        assert sum(len(other.transitions(uid)) for uid in uids) == 8 * 25
    finally:
        other.close()


def test_concurrent_transitions_from_separate_handles(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()  # create the schema once
    uids = [f"1.2.4.{n}" for n in range(8)]
    start = threading.Barrier(len(uids))
    errors: list[BaseException] = []

    def work(uid: str) -> None:
        handle = Ledger(path)
        try:
            start.wait()
            for state in (State.RECEIVING, State.COMPLETE, State.INDEXED):
                handle.transition(uid, state, counts={"uid": uid})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            handle.close()

    threads = [threading.Thread(target=work, args=(uid,)) for uid in uids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    check = Ledger(path)
    try:
        assert [r.study_uid for r in check.studies([State.INDEXED])] == uids
        for uid in uids:
            assert [t.counts for t in check.transitions(uid)] == [{"uid": uid}] * 3
    finally:
        check.close()
