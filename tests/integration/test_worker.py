"""The worker: transient failures wait and retry, permanent ones stop with the reason,
`retry` and `quarantine release` put studies back, metrics tell the truth."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from bidsflux import embedded, storage
from bidsflux.cli import main
from bidsflux.embedded import Service
from bidsflux.errors import StorageError
from bidsflux.ledger import State
from bidsflux.metrics import MetricsServer, render
from bidsflux.scanner import StudySpec, study_uid
from bidsflux.settings import Settings

from ..batches import make_batch


@pytest.fixture
def service(tmp_path: Path):
    settings = Settings().replace(workdir=tmp_path / "work", forge_port=0, retry_initial=0.01, retry_max=0.05)
    running = Service(settings)
    running.forge_server.start()
    yield running
    running.forge_server.stop()
    running.ledger.close()


def _run_until(service: Service, uid: str, state: State, steps: int = 10) -> None:
    for _ in range(steps):
        if service.ledger.require(uid).state is state:
            return
        if not service.step():
            time.sleep(0.06)  # a backoff is pending
    assert service.ledger.require(uid).state is state, service.ledger.require(uid).error


def test_store_outage_waits_in_indexed_and_resumes(service: Service, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec = StudySpec(seed=31)
    uid = study_uid(spec)
    make_batch(service.spool.root, spec, tmp_path / "d", only_series={1, 2})
    real_push = storage.push
    outages = iter([True, True, False])

    def flaky_push(*args, **kwargs):
        if next(outages):
            raise StorageError("store unreachable: connection refused", study=uid, transient=True)
        return real_push(*args, **kwargs)

    monkeypatch.setattr(embedded.storage, "push", flaky_push)
    assert service.step()  # index
    assert service.ledger.require(uid).state is State.INDEXED
    assert service.step()  # first outage
    record = service.ledger.require(uid)
    assert record.state is State.INDEXED and "retrying" in record.error and record.attempt == 1
    _run_until(service, uid, State.STORED)
    errors = [t.error for t in service.ledger.transitions(uid) if t.error]
    assert len(errors) == 2 and all("store unreachable" in e for e in errors)


def test_permanent_failure_then_retry(service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec = StudySpec(seed=32)
    uid = study_uid(spec)
    make_batch(service.spool.root, spec, tmp_path / "d", only_series={1})
    real_push = storage.push

    def refused(*args, **kwargs):
        raise StorageError("access denied: the key may not write to this bucket", study=uid)

    monkeypatch.setattr(embedded.storage, "push", refused)
    service.step()
    service.step()
    record = service.ledger.require(uid)
    assert record.state is State.FAILED and "access denied" in record.error

    monkeypatch.setattr(embedded.storage, "push", real_push)
    assert main(["retry", uid, "--workdir", str(service.settings.workdir)]) == 0
    assert "back to INDEXED" in capsys.readouterr().out
    _run_until(service, uid, State.STORED)


def test_quarantine_list_and_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = Settings().replace(workdir=tmp_path / "work", forge_port=0,
                                group_template="{ClinicalTrialSponsorName}/{StudyDescriptionPath[1]}")
    spec = StudySpec(seed=33)
    uid = study_uid(spec)
    first = Service(broken)
    first.forge_server.start()
    make_batch(first.spool.root, spec, tmp_path / "d", only_series={1})
    first.step()
    record = first.ledger.require(uid)
    assert record.state is State.QUARANTINED and "ClinicalTrialSponsorName" in record.error
    first.forge_server.stop()
    first.ledger.close()
    assert list((broken.spool_dir / "quarantine").glob(f"{uid}@*/reason.json"))

    assert main(["quarantine", "list", "--workdir", str(broken.workdir)]) == 0
    listed = capsys.readouterr().out
    assert uid in listed and "ClinicalTrialSponsorName" in listed and "kept at" in listed
    assert main(["retry", "1.2.3.4", "--workdir", str(broken.workdir)]) != 0  # unknown study: one-line error
    assert "no such study" in capsys.readouterr().err

    assert main(["quarantine", "release", uid, "--workdir", str(broken.workdir)]) == 0
    fixed = Service(broken.replace(group_template="{ReferringPhysicianName}/{StudyDescriptionPath[1]}"))
    fixed.forge_server.start()
    try:
        assert fixed.ledger.require(uid).state is State.COMPLETE
        fixed.step()
        assert fixed.ledger.require(uid).state is State.INDEXED
    finally:
        fixed.forge_server.stop()
        fixed.ledger.close()


def test_metrics_from_the_ledger(service: Service) -> None:
    service.ledger.transition("1.2.3", State.RECEIVING, first_arrival=time.time())
    service.ledger.update("1.2.3", instances=5, bytes=5000)
    service.ledger.transition("1.2.3", State.COMPLETE)
    service.ledger.transition("1.2.4", State.FAILED, error="x")
    service.ledger.transition("1.2.5", State.MERGED, details={"derivatives": {
        "stats": {"status": "success"}, "qc/stats": {"status": "failed"}, "mriqc": {"status": "not run here"}}})
    text = render(service.ledger)
    assert 'bidsflux_derivatives{status="failed"} 1' in text and 'bidsflux_derivatives{status="success"} 1' in text
    assert 'bidsflux_derivatives{status="pending"} 0' in text
    assert 'bidsflux_derivatives{status="not run here"} 1' in text
    assert 'bidsflux_studies{state="COMPLETE"} 1' in text and 'bidsflux_studies{state="FAILED"} 1' in text
    assert 'bidsflux_studies{state="MERGED"} 1' in text and 'bidsflux_studies{state="CONVERTED"} 0' in text
    assert "bidsflux_received_instances_total 5" in text and "bidsflux_received_bytes_total 5000" in text
    assert 'bidsflux_stage_duration_seconds_count{state="COMPLETE"} 1' in text
    server = MetricsServer(service.ledger, "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            assert response.status == 200 and b"bidsflux_studies" in response.read()
    finally:
        server.stop()


def test_a_study_a_routing_rule_ignores_is_kept_aside_not_indexed(service: Service, tmp_path: Path) -> None:
    import json

    spec = StudySpec(seed=34)
    uid = study_uid(spec)
    batch = make_batch(service.spool.root, spec, tmp_path / "d", only_series={1})
    (batch / "route.json").write_text(json.dumps({"rule": "phantoms", "ignore": True}))
    service.step()
    record = service.ledger.require(uid)
    assert record.state is State.QUARANTINED and "ignored by routing rule 'phantoms'" in record.error
    assert not service.settings.datasets_dir.exists() or not any(service.settings.datasets_dir.rglob("manifest.json"))
    assert list((service.spool.root / "quarantine").glob(f"{uid}@*/route.json"))
