"""The command line: one-line errors, stable exit codes, status output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bidsflux.cli import main
from bidsflux.errors import LedgerError, SettingsError, UsageError
from bidsflux.ledger import Ledger, State


def test_status_without_studies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--workdir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "no studies yet"


def test_status_lists_studies_with_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.transition("1.2.3", State.RECEIVING, calling_aet="SCANNER1", first_arrival=1.0)
    ledger.transition("1.2.3", State.COMPLETE, counts={"instances": 10})
    ledger.update("1.2.3", instances=10, series=2, bytes=2_000_000)
    ledger.transition("1.2.4", State.QUARANTINED, error="template field {StudyDescriptionPath[1]} is empty")
    ledger.close()

    assert main(["status", "--workdir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "1.2.3" in table and "COMPLETE" in table and "1.2.4" in table and "QUARANTINED" in table
    assert "template field" in table

    assert main(["status", "--workdir", str(tmp_path), "--json", "--state", "complete"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["study_uid"], r["state"], r["instances"], r["series"]) for r in rows] == [("1.2.3", "COMPLETE", 10, 2)]

    assert main(["status", "--workdir", str(tmp_path), "--json", "--study", "1.2.*"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_unknown_state_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Ledger(tmp_path / "ledger.sqlite").close()
    assert main(["status", "--workdir", str(tmp_path), "--state", "DONE"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("bidsflux: error:") and "DONE" in err and len(err.strip().splitlines()) == 1


def test_bad_settings_are_all_reported_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STORESCP_PORT", "99999")
    monkeypatch.setenv("BIDSFLUX_QUIET_PERIOD", "-1")
    monkeypatch.setenv("BIDSFLUX_FORGE_TOKEN", "s3cr3t-value-never-shown")
    monkeypatch.setenv("BIDSFLUX_AUTO_MERGE", "sometimes")
    assert main(["status", "--workdir", str(tmp_path)]) == SettingsError.exit_code
    err = capsys.readouterr().err
    assert "STORESCP_PORT" in err and "BIDSFLUX_QUIET_PERIOD" in err and "BIDSFLUX_AUTO_MERGE" in err
    assert "s3cr3t-value-never-shown" not in err
    assert len(err.strip().splitlines()) == 1


def test_send_test_study_needs_a_destination(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send-test-study"]) == UsageError.exit_code
    assert "HOST and PORT" in capsys.readouterr().err


def test_send_test_study_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send-test-study", "--output", str(tmp_path / "out"), "--seed", "3"]) == 0
    written = list((tmp_path / "out").rglob("*.dcm"))
    assert written and f"wrote {len(written)} instances" in capsys.readouterr().out


def test_unreachable_endpoint_is_one_line_with_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["send-test-study", "127.0.0.1", str(port)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code != 0 and f"127.0.0.1:{port}" in err and err.startswith("bidsflux: error:")


def test_python_dash_m_works(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bidsflux", "status", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0 and "no studies yet" in done.stdout


def test_ledger_error_exit_code_is_stable() -> None:
    assert LedgerError.exit_code == 10 and SettingsError.exit_code == 2


def test_status_history_shows_every_transition(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.transition("1.2.9", State.RECEIVING, calling_aet="MR1", peer="10.0.0.5:4000")
    ledger.transition("1.2.9", State.COMPLETE, counts={"instances": 7})
    ledger.transition("1.2.9", State.COMPLETE, error="retrying in 5s: store unreachable", attempt=1)
    ledger.close()
    assert main(["status", "--workdir", str(tmp_path), "--history"]) == 0
    out = capsys.readouterr().out
    assert "RECEIVING -> COMPLETE  instances=7" in out
    assert "(attempt 1)" in out and "error: retrying in 5s: store unreachable" in out
    assert main(["status", "--workdir", str(tmp_path), "--history", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [t["to"] for t in rows[0]["transitions"]] == ["RECEIVING", "COMPLETE", "COMPLETE"]
