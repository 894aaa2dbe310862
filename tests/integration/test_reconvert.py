"""`bidsflux reconvert`: a heuristic change names exactly the sessions it affects, then one review per study."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bidsflux.embedded import Service
from bidsflux.forge.review import LocalReview
from bidsflux.ledger import State
from bidsflux.runner import job_environment
from bidsflux.scanner import StudySpec, send_study, study_uid
from bidsflux.settings import Settings

pytestmark = pytest.mark.integration

# ReproIn, except that the T1w of a second session is named as an MPRAGE acquisition.
SESSION_TWO_HEURISTIC = '''\
from heudiconv.heuristics.reproin import *  # noqa: F401,F403
from heudiconv.heuristics import reproin as _reproin


def infotodict(seqinfo):
    info = _reproin.infotodict(seqinfo)
    if not any("_ses-02" in (s.protocol_name or "") for s in seqinfo):
        return info
    return {((key[0].replace("_T1w", "_acq-mprage_T1w"),) + tuple(key[1:])): value for key, value in info.items()}
'''


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, list[str]]]:
    root = tmp_path_factory.mktemp("reconvert")
    settings = Settings().replace(workdir=root / "work", storescp_port=0, forge_port=0, quiet_period=1.0)
    service = Service(settings).start()
    try:
        uids = []
        for seed, session in ((31, "01"), (32, "02")):
            spec = StudySpec(seed=seed, patient_id="RC01", study_description="Doe^Reconvert", session=session)
            assert send_study(spec, "127.0.0.1", service.endpoint.port).failed == 0
            uids.append(study_uid(spec))
            service.wait_until_idle(uids[-1], timeout=600)
            assert service.ledger.require(uids[-1]).state is State.MERGED
        yield service, uids
    finally:
        service.stop()


def bidsflux(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bidsflux", *args, "--workdir", str(service.settings.workdir)], capture_output=True,
                          text=True, env={**os.environ, "BIDSFLUX_FORGE_PORT": "0"}, timeout=900)


def test_dry_run_names_exactly_the_affected_sessions_then_one_merge_request(
        converted: tuple[Service, list[str]], tmp_path: Path) -> None:
    service, (first, second) = converted
    record = service.ledger.require(second)
    bids_url = record.details["bids_url"]
    project = "Doe-Jane/Reconvert/bids"
    env = {**os.environ, **job_environment(service.settings, service.forge.token)}

    unchanged = bidsflux(service, "reconvert", "--dry-run")
    assert unchanged.returncode == 0, unchanged.stderr
    assert "0 of 2 converted session(s) would change" in unchanged.stdout
    # A study that starts allowing DICOM archives in its BIDS tree: every session would change, and says why.
    keep = subprocess.run(["bidsflux", "reconvert", "--dry-run", "--json", "--workdir", str(service.settings.workdir)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "BIDSFLUX_FORGE_PORT": "0",
                               "BIDSFLUX_PHI_ALLOW": "patient-id,acquisition-time,dicom-archives"})
    assert keep.returncode == 0, keep.stderr
    assert [p["reasons"] for p in json.loads(keep.stdout)] == [["DICOM archives in sourcedata/: dropped -> kept"]] * 2

    work = tmp_path / "bids"
    subprocess.run(["git", "clone", "-q", "--branch", "dev", bids_url, str(work)], env=env, check=True)
    (work / "code").mkdir()
    (work / "code" / "mprage.py").write_text(SESSION_TWO_HEURISTIC)
    subprocess.run(["git", "add", "code/mprage.py"], cwd=work, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "MPRAGE naming for second sessions"], cwd=work, env=env, check=True)
    subprocess.run(["git", "push", "-q", "origin", "HEAD:dev"], cwd=work, env=env, check=True)
    dev_before = subprocess.run(["git", "ls-remote", bids_url, "refs/heads/dev"], env=env, capture_output=True,
                                text=True, check=True).stdout.split()[0]

    dry = bidsflux(service, "reconvert", "--dry-run", "--json", "--heuristic", "code/mprage.py")
    assert dry.returncode == 0, dry.stderr
    plans = {p["study_uid"]: p for p in json.loads(dry.stdout)}
    assert set(plans) == {first, second}
    assert plans[first]["affected"] is False and plans[first]["reasons"] == []
    assert plans[second]["affected"] is True
    [reason] = plans[second]["reasons"]
    assert "anat-T1w" in reason and "_T1w" in reason and "_acq-mprage_T1w" in reason

    applied = bidsflux(service, "reconvert", "--heuristic", "code/mprage.py")
    assert applied.returncode == 0, applied.stdout[-2000:] + applied.stderr[-2000:]
    assert "1 of 2 converted session(s) would change" in applied.stdout
    [mr] = [m for m in LocalReview(service.settings.forge_dir).list(project) if m.source_branch.startswith("reconvert/")]
    assert mr.state == "opened" and mr.target_branch == "dev"
    assert [n["body"].splitlines()[0] for n in mr.notes[-2:]] == ["### BIDS validator: passed", "### PHI check: passed"]
    head = subprocess.run(["git", "ls-remote", bids_url, "refs/heads/dev"], env=env, capture_output=True, text=True,
                          check=True).stdout.split()[0]
    assert head == dev_before, "a re-conversion waits for review"
    subprocess.run(["git", "fetch", "-q", "origin", mr.source_branch], cwd=work, env=env, check=True)
    tree = subprocess.run(["git", "ls-tree", "-r", "--name-only", "FETCH_HEAD"], cwd=work, capture_output=True,
                          text=True, check=True).stdout.splitlines()
    assert "sub-rc01/ses-02/anat/sub-rc01_ses-02_acq-mprage_T1w.nii.gz" in tree
    assert "sub-rc01/ses-02/anat/sub-rc01_ses-02_T1w.nii.gz" not in tree, "the old name stayed behind"
    assert "sub-rc01/ses-01/anat/sub-rc01_ses-01_T1w.nii.gz" in tree


def test_each_sessions_validation_reads_only_its_own_images(converted: tuple[Service, list[str]]) -> None:
    import re

    service, (first, second) = converted
    pattern = re.compile(r"get (\d+) images of this conversion from the store(?:; (\d+) images of other sessions "
                         r"stay there)?")
    found = {}
    for uid in (first, second):
        log = sorted(service.settings.jobs_dir.glob(f"bids-validate-{uid}-*/job.log"))[-1].read_text()
        match = pattern.search(log)
        assert match is not None, log[-2000:]
        found[uid] = (int(match[1]), int(match[2] or 0))
    # The first session is the whole dataset; the second fetches its own images and leaves the first's in the store.
    assert found[first][0] > 0 and found[first][1] == 0
    assert found[second] == (found[first][0], found[first][0])
    summary = service.ledger.require(second).details["validation"]
    assert summary.startswith("valid:") and f"headers of {found[first][0]} images of other sessions not read" in summary
