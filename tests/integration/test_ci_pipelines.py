"""The CI templates of ci-pipelines/, run for real by gitlab-ci-local (shell mode) against the local forge and SeaweedFS.

The embedded default publishes sessions and leaves the conversion to an
external runner (``BIDSFLUX_RUNNER=external``); gitlab-ci-local then runs the
study superdataset's pipeline (study.yml), which starts the bids pipeline
(bids.yml) for the new session, or runs bids.yml itself for one session, on
a checkout made like a GitLab runner's: a clone of the project from the forge.
"""

from __future__ import annotations

import json
import os
import shutil
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

from ..conftest import researcher_env
from ..services.seaweedfs import SeaweedFS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GCL = ROOT / "node_modules" / ".bin" / "gitlab-ci-local"
PIPELINES = ROOT / "ci-pipelines"

# A site heuristic kept in the study's BIDS dataset: ReproIn, but T1w images get a suffix BIDS does not know.
BROKEN_HEURISTIC = '''\
from heudiconv.heuristics.reproin import *  # noqa: F401,F403
from heudiconv.heuristics import reproin as _reproin


def infotodict(seqinfo):
    info = _reproin.infotodict(seqinfo)
    return {((key[0].replace("_T1w", "_T1wbroken"),) + tuple(key[1:])): value for key, value in info.items()}
'''


DERIVATIVE_JOBS = """\
include:
  - local: /ci-pipelines/derivatives.yml

stats:
  extends: .bidsflux-derivative
  variables:
    BIDSFLUX_DERIVATIVE_COMMAND: "python -m bidsflux.derive.stats --mean-images inputs/bids ."

qc-stats:
  extends: .bidsflux-qc
  needs: [stats]
  variables:
    BIDSFLUX_DERIVATIVE_INPUTS: stats
    BIDSFLUX_DERIVATIVE_COMMAND: "python -m bidsflux.derive.qc inputs/stats ."
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, SeaweedFS]]:
    if not GCL.exists():
        pytest.fail("gitlab-ci-local is not installed: run `make install` (npm ci)")
    root = tmp_path_factory.mktemp("site")
    with SeaweedFS(root / "s3") as s3:
        settings = Settings().replace(
            workdir=root / "work", storescp_port=0, forge_port=0, quiet_period=1.0, runner="external",
            storage_type="s3", s3_endpoint_url=s3.endpoint, s3_access_key=s3.access_key,
            s3_secret_key=s3.secret_key)
        service = Service(settings).start()
        try:
            yield service, s3
        finally:
            service.stop()


def publish(service: Service, spec: StudySpec) -> dict[str, str]:
    sent = send_study(spec, "127.0.0.1", service.endpoint.port)
    assert sent.failed == 0
    uid = study_uid(spec)
    service.wait_until_idle(uid, timeout=600)
    record = service.ledger.require(uid)
    assert record.state is State.PUBLISHED, record.error
    return {"study": uid, **{k: str(v) for k, v in record.details.items() if isinstance(v, str)}}


def project_checkout(service: Service, url: str, folder: Path, ref: str, include: str) -> Path:
    """What a GitLab runner has: the project cloned from the forge, and its .gitlab-ci.yml including a template."""
    env = {**os.environ, **job_environment(service.settings, service.forge.token)}
    subprocess.run(["git", "clone", "--quiet", "--branch", ref, url, str(folder)], env=env, check=True)
    shutil.copytree(PIPELINES, folder / "ci-pipelines")
    (folder / ".gitlab-ci.yml").write_text(f"include:\n  - local: /ci-pipelines/{include}\n")
    # gitlab-ci-local reads what git tracks; the commit stays in this checkout.
    subprocess.run(["git", "add", ".gitlab-ci.yml", "ci-pipelines"], cwd=folder, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "CI"], cwd=folder, env=env, check=True)
    return folder


def gitlab_ci_local(service: Service, project: Path, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **job_environment(service.settings, service.forge.token), "NO_COLOR": "1"}
    args = [str(GCL)]
    for key, value in variables.items():
        args += ["--variable", f"{key}={value}"]
    return subprocess.run(args, env=env, cwd=project, capture_output=True, text=True, timeout=900)


def forge_git(service: Service, project: str, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=service.settings.forge_dir / f"{project}.git", capture_output=True,
                          text=True, check=True).stdout.strip()


def test_study_pipeline_starts_the_bids_pipeline_which_converts_validates_and_merges(
        site: tuple[Service, SeaweedFS], tmp_path: Path) -> None:
    service, s3 = site
    spec = StudySpec(seed=21, patient_id="CI01", study_description="Doe^Pipelines")
    session = publish(service, spec)
    group = "Doe-Jane/Pipelines"
    study_project = project_checkout(service, session["study_url"], tmp_path / "study", "main", "study.yml")

    done = gitlab_ci_local(service, study_project, {"CI_COMMIT_BEFORE_SHA": "0" * 40})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    for job in ("convert", "validate", "phi-check", "merge"):
        assert f"job {job}" in log
    assert "PHI check: no identifying data found" in log

    dev_log = forge_git(service, f"{group}/bids", "log", "--format=%s", "dev")
    assert dev_log.splitlines()[0] == f"[bids-flux] Merge convert/{session['session_path']} into dev"
    message = forge_git(service, f"{group}/bids", "log", "-1", "--format=%B", "dev^2")
    assert "heuristic: reproin" in message and "heudiconv: " in message and "dcm2niix: " in message
    [mr] = LocalReview(service.settings.forge_dir).list(f"{group}/bids")
    assert mr.state == "merged" and mr.target_branch == "dev"
    assert [n["body"].splitlines()[0] for n in mr.notes] == ["### BIDS validator: passed", "### PHI check: passed"]

    # A researcher clones the result and gets its content from S3.
    env = researcher_env(tmp_path / "home")
    subprocess.run(["git", "config", "--global", "annex.security.allowed-ip-addresses", "127.0.0.1"], env=env,
                   check=True)
    env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
    clone = tmp_path / "clone"
    subprocess.run(["datalad", "clone", session["bids_url"], str(clone)], env=env, check=True, capture_output=True)
    got = subprocess.run(["datalad", "get", "."], cwd=clone, env=env, capture_output=True, text=True)
    assert got.returncode == 0, got.stdout + got.stderr
    assert not list(clone.glob(".heudiconv")), "heudiconv's header dump must not be published"
    valid = subprocess.run(["bids-validator-deno", str(clone)], env=env, capture_output=True, text=True)
    assert valid.returncode == 0, valid.stdout[-2000:]
    record = json.loads((clone / ".bidsflux" / "conversions" / f"{session['session_path']}.json").read_text())
    assert record["heuristic"] == "reproin" and record["mapping"]
    # The DICOMs are the sourcedata/dicoms subdataset; no copy with every header inside the BIDS tree.
    assert record["dicom_archives"] is False and not list((clone / "sourcedata").glob("sub-*"))
    assert not [p for p in record["outputs"] if p.endswith(".dicom.tgz")]
    assert all(target.endswith("[nii.gz]") for targets in record["mapping"].values() for target in targets)

    # The study's derivative DAG on its bids project: stats, then a GPU-tagged mean-image job and QC needing it.
    project = project_checkout(service, session["bids_url"], tmp_path / "bids", "dev", "derivatives.yml")
    (project / ".gitlab-ci.yml").write_text(DERIVATIVE_JOBS)
    subprocess.run(["git", "commit", "-qam", "Derivatives"], cwd=project, check=True)
    done = gitlab_ci_local(service, project, {"BIDSFLUX_PIPELINE": "derivatives",
                                              "BIDSFLUX_BIDS_URL": session["bids_url"]})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert log.index("stats ") < log.index("qc-stats ")
    dev = forge_git(service, f"{group}/bids", "rev-parse", "dev")
    stats = tmp_path / "stats"
    url = session["bids_url"].removesuffix("/bids.git") + "/derivatives/stats.git"
    subprocess.run(["datalad", "clone", url, str(stats)], env=env, check=True, capture_output=True)
    rows = (stats / "stats.tsv").read_text().splitlines()
    assert len(rows) - 1 == len(list(clone.glob("sub-*/**/*.nii.gz")))
    run_record = subprocess.run(["git", "log", "-1", "--format=%B"], cwd=stats, capture_output=True, text=True,
                                check=True).stdout
    assert "[DATALAD RUNCMD]" in run_record and "bidsflux.derive.stats" in run_record
    pinned = subprocess.run(["git", "ls-tree", "HEAD", "inputs/bids"], cwd=stats, capture_output=True, text=True,
                            check=True).stdout.split()[2]
    assert pinned == dev, "the derivative records the BIDS commit it was made from"
    description = json.loads((stats / "dataset_description.json").read_text())
    assert description["SourceDatasets"][0]["Version"] == dev
    qc = tmp_path / "qc"
    qc_url = session["bids_url"].removesuffix("/bids.git") + "/qc/qc-stats.git"
    subprocess.run(["datalad", "clone", qc_url, str(qc)], env=env, check=True, capture_output=True)
    assert (qc / "qc.tsv").read_text().startswith("path\t")


def test_failing_validator_blocks_the_merge_and_a_planted_patient_name_fails_phi_check(
        site: tuple[Service, SeaweedFS], tmp_path: Path) -> None:
    service, _ = site
    spec = StudySpec(seed=22, patient_id="CI02", study_description="Doe^Broken")
    session = publish(service, spec)
    group = "Doe-Jane/Broken"
    project = project_checkout(service, session["bids_url"], tmp_path / "bids", "dev", "bids.yml")
    # The study keeps its own heuristic in its dataset (a site heuristic from the repository).
    env = {**os.environ, **job_environment(service.settings, service.forge.token)}
    (project / "code").mkdir()
    (project / "code" / "heuristic.py").write_text(BROKEN_HEURISTIC)
    subprocess.run(["git", "add", "code/heuristic.py"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "Site heuristic"], cwd=project, env=env, check=True)
    subprocess.run(["git", "push", "-q", "origin", "HEAD:dev"], cwd=project, env=env, check=True)
    dev_before = forge_git(service, f"{group}/bids", "rev-parse", "dev")
    variables = {"BIDSFLUX_PIPELINE": "convert", "BIDSFLUX_SESSION": session["session_path"],
                 "BIDSFLUX_STUDY_UID": session["study"], "BIDSFLUX_BIDS_URL": session["bids_url"],
                 "BIDSFLUX_HEURISTIC": "code/heuristic.py"}

    done = gitlab_ci_local(service, project, variables)
    log = done.stdout + done.stderr
    assert done.returncode != 0, log[-3000:]
    assert "BIDS validator: INVALID" in log
    assert "heuristic code/heuristic.py (dataset" in log
    assert forge_git(service, f"{group}/bids", "rev-parse", "dev") == dev_before, "an invalid conversion merged"
    [mr] = LocalReview(service.settings.forge_dir).list(f"{group}/bids")
    assert mr.state == "opened"
    assert any(n["body"].startswith("### BIDS validator: FAILED") for n in mr.notes)
    assert (project / "bids-validator.xml").read_text().count("<failure") >= 1

    # The PHI check on its own, against a conversion with a PatientName planted in a sidecar.
    branch = f"convert/{session['session_path']}"
    work = tmp_path / "plant"
    subprocess.run(["git", "clone", "-q", "--branch", branch, session["bids_url"], str(work)], env=env, check=True)
    sidecar = next(work.glob("sub-*/ses-*/func/*_bold.json"))
    data = json.loads(sidecar.read_text())
    data["PatientName"] = "Synthetic^Subject"
    sidecar.write_text(json.dumps(data, indent=2))
    subprocess.run(["git", "commit", "-qam", "Planted"], cwd=work, env=env, check=True)
    subprocess.run(["git", "push", "-q", "origin", f"HEAD:{branch}"], cwd=work, env=env, check=True)
    planted = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
    phi = subprocess.run(["bidsflux", "ci", "phi-check", "--commit", planted],
                         env={**env, **variables, "BIDSFLUX_MERGE_REQUEST": str(mr.iid)}, cwd=tmp_path,
                         capture_output=True, text=True)
    assert phi.returncode == 1, phi.stdout + phi.stderr
    relative = sidecar.relative_to(work)
    assert f"FOUND {relative}" in phi.stdout and "key PatientName" in phi.stdout
    assert "Synthetic^Subject" not in phi.stdout + phi.stderr, "a finding must not print the name it found"
    mr = LocalReview(service.settings.forge_dir).get(f"{group}/bids", mr.iid)
    assert mr.notes[-1]["body"].startswith("### PHI check: FAILED")
