"""DICOM in, BIDS out: the whole embedded path, driven like a site would drive it.

dcmtk's storescu is the scanner; a researcher then clones the BIDS dataset
over HTTP into a fresh HOME, gets the NIfTI content from the store and runs
the BIDS validator on the clone.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel
import pytest

from bidsflux.embedded import Service
from bidsflux.ledger import State
from bidsflux.scanner import StudySpec, study_uid, write_study
from bidsflux.settings import Settings

from ..conftest import researcher_env

STORESCU = "/usr/bin/storescu"


def storescu(port: int, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STORESCU, "-aet", "DCMTKSCU", "-aec", "BIDSFLUX", "+sd", "+r", "127.0.0.1", str(port), str(folder)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def service(tmp_path: Path):
    settings = Settings().replace(workdir=tmp_path / "work", storescp_port=0, forge_port=0, quiet_period=1.0)
    running = Service(settings).start()
    yield running
    running.stop()


def test_storescu_study_becomes_a_clonable_valid_bids_dataset(service: Service, tmp_path: Path) -> None:
    spec = StudySpec(seed=7, patient_id="E2E01", study_description="Smith^Memory")
    files = write_study(spec, tmp_path / "dicoms")
    uid = study_uid(spec)

    sent = storescu(service.endpoint.port, tmp_path / "dicoms")
    assert sent.returncode == 0, sent.stderr
    service.wait_until_idle(uid, timeout=600)

    record = service.ledger.require(uid)
    assert record.state is State.MERGED, record.error
    assert record.instances == len(files)
    assert record.calling_aet == "DCMTKSCU"
    assert record.group_path == "Doe-Jane/Memory"
    visited = [t.to_state for t in service.ledger.transitions(uid)]
    for state in (State.RECEIVING, State.COMPLETE, State.INDEXED, State.STORED, State.PUBLISHED,
                  State.CONVERTING, State.CONVERTED, State.VALIDATED, State.MERGED):
        assert state in visited
    indexed = next(t for t in service.ledger.transitions(uid) if t.to_state is State.INDEXED)
    assert indexed.counts["instances"] == len(files)

    # A researcher, in a fresh shell with nothing configured.
    env = researcher_env(tmp_path / "researcher-home")
    clone = tmp_path / "clone"
    bids_url = record.details["bids_url"]
    subprocess.run(["datalad", "clone", bids_url, str(clone)], env=env, check=True, capture_output=True)
    got = subprocess.run(["datalad", "get", "."], cwd=clone, env=env, capture_output=True, text=True)
    assert got.returncode == 0, got.stdout + got.stderr

    subject = clone / "sub-e2e01" / "ses-01"
    bold = sorted((subject / "func").glob("*_bold.nii.gz"))
    assert [p.name for p in bold] == ["sub-e2e01_ses-01_task-rest_run-01_bold.nii.gz",
                                      "sub-e2e01_ses-01_task-rest_run-02_bold.nii.gz"]
    assert len(nibabel.load(bold[0]).shape) == 4
    assert (subject / "anat" / "sub-e2e01_ses-01_T1w.nii.gz").resolve().is_file()
    fmap = json.loads((subject / "fmap" / "sub-e2e01_ses-01_dir-AP_epi.json").read_text())
    assert sorted(fmap["IntendedFor"]) == sorted(f"bids::sub-e2e01/ses-01/func/{p.name}" for p in bold) or \
        sorted(fmap["IntendedFor"]) == sorted(f"ses-01/func/{p.name}" for p in bold)

    validated = subprocess.run(["bids-validator-deno", str(clone)], env=env, capture_output=True, text=True)
    assert validated.returncode == 0, validated.stdout[-3000:]

    log = subprocess.run(["git", "log", "--format=%B", "-n", "2", "--first-parent"], cwd=clone, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "Merge convert/" in log
    message = subprocess.run(["git", "log", "--format=%B", "-n", "1", "HEAD^2"], cwd=clone, env=env,
                             capture_output=True, text=True, check=True).stdout
    assert "heuristic: reproin" in message and "heudiconv: 1.5.1" in message

    # The session's DICOM archives come from the store too, through the superdataset.
    subprocess.run(["datalad", "get", "-n", "sourcedata/dicoms"], cwd=clone, env=env, check=True,
                   capture_output=True)
    session = record.details["session_path"]
    got = subprocess.run(["datalad", "get", f"sourcedata/dicoms/{session}"], cwd=clone, env=env,
                         capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    manifest = json.loads((clone / "sourcedata" / "dicoms" / session / "manifest.json").read_text())
    assert manifest["instances"] == len(files)
    assert len(list((clone / "sourcedata" / "dicoms" / session).glob("*.tar"))) == 6

    # Resending the identical study changes nothing: no new session commit, same state.
    dataset = Path(record.details["dataset"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dataset, capture_output=True, text=True).stdout
    assert storescu(service.endpoint.port, tmp_path / "dicoms").returncode == 0
    _wait_for_transition_count(service, uid, len(visited) + 3)
    service.wait_until_idle(uid, timeout=300)
    assert service.ledger.require(uid).state is State.MERGED
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=dataset, capture_output=True,
                          text=True).stdout == head


def _wait_for_transition_count(service: Service, uid: str, count: int, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(service.ledger.transitions(uid)) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"study {uid} did not move again")
