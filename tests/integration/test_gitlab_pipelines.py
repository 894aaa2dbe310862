"""Conversion pipelines on GitLab (the double): triggered with the session's variables, followed, recorded.

The double records pipelines but runs no jobs; each test does what the
conversion job would do to the BIDS project (push ``convert/<session>`` as
bids_bot, merge it into ``dev``) and scripts the statuses the pipeline shows.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bidsflux.cli import main
from bidsflux.errors import ForgeError
from bidsflux.forge import credential_env, make_forge
from bidsflux.forge.gitlab import GitLabForge
from bidsflux.forge.pipelines import follow_conversion
from bidsflux.forge.publish import Published, publish_session
from bidsflux.index import index_batch
from bidsflux.ledger import Ledger, State
from bidsflux.scanner import StudySpec, study_uid, write_study

from ..gitlab_double.site import Site

pytest_plugins = ["tests.gitlab_double.fixture"]


@pytest.fixture
def published(gitlab_site: Site, tmp_path: Path) -> Iterator[tuple[Site, Ledger, Published, str]]:
    """One study published to the site, with the ledger entries the worker writes up to PUBLISHED."""
    settings = gitlab_site.settings
    spec = StudySpec(seed=61)
    write_study(spec, tmp_path / "batch")
    result = index_batch(settings, study_uid(spec), tmp_path / "batch")
    pub = publish_session(settings, make_forge(settings), result)
    ledger = Ledger(settings.ledger_path)
    ledger.transition(result.study_uid, State.INDEXED, group_path=pub.group_path,
                      details={"session_path": pub.session_path})
    ledger.transition(result.study_uid, State.STORED)
    ledger.transition(result.study_uid, State.PUBLISHED, details={
        "session_url": pub.session_url, "study_url": pub.study_url, "bids_url": pub.bids_url,
        "session_commit": pub.session_commit, "study_commit": pub.study_commit})
    yield gitlab_site, ledger, pub, result.study_uid
    ledger.close()


def convert_job(site: Site, pub: Published, tmp_path: Path, *, merge: bool) -> str:
    """What the CI job leaves behind: convert/<session> (and dev merged), pushed as bids_bot."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0",
           "GIT_AUTHOR_NAME": "bids_bot", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "bids_bot",
           "GIT_COMMITTER_EMAIL": "b@x", **credential_env(site.token("gitlab_bids_bot_token"), "bids_bot")}
    clone = tmp_path / f"job-{merge}"
    subprocess.run(["git", "clone", "-q", "-b", "dev", pub.bids_url, str(clone)], check=True, env=env)
    branch = f"convert/{pub.session_path}"
    subprocess.run(["git", "checkout", "-q", "-b", branch], cwd=clone, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "convert"], cwd=clone, check=True, env=env)
    refs = [branch]
    if merge:
        subprocess.run(["git", "checkout", "-q", "dev"], cwd=clone, check=True, env=env)
        subprocess.run(["git", "merge", "-q", "--no-ff", "-m", "merge", branch], cwd=clone, check=True, env=env)
        refs.append("dev")
    subprocess.run(["git", "push", "-q", "origin", *refs], cwd=clone, check=True, env=env, capture_output=True)
    return subprocess.run(["git", "rev-parse", branch], cwd=clone, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_pipeline_run_records_the_final_status(published: tuple[Site, Ledger, Published, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    site, ledger, pub, uid = published
    double = site.double
    commit = convert_job(site, pub, tmp_path, merge=True)
    for name, value in (("BIDSFLUX_FORGE_TYPE", "gitlab"), ("CI_SERVER_URL", double.url),
                        ("GITLAB_DICOM_BOT_TOKEN", str(site.settings.gitlab_dicom_bot_token)),
                        ("BIDSFLUX_PIPELINE_POLL", "0.01"), ("BIDSFLUX_GITLAB_RETRIES", "1")):
        monkeypatch.setenv(name, value)
    double.script_pipelines(["running", "running", "success"])

    code = main(["pipeline", "run", uid, "--workdir", str(site.settings.workdir), "--var", "BIDSFLUX_NOTE=rerun"])
    out = capsys.readouterr().out
    assert code == 0, out
    pipeline = [p for p in double.pipelines(f"{pub.group_path}/bids") if p.source == "api"][-1]
    assert f"pipeline #{pipeline.id}" in out and "success" in out
    variables = {v["key"]: v["value"] for v in pipeline.variables}
    assert variables["BIDSFLUX_STUDY_UID"] == uid and variables["BIDSFLUX_SESSION"] == pub.session_path
    assert variables["BIDSFLUX_NOTE"] == "rerun" and variables["BIDSFLUX_STUDY_COMMIT"] == pub.study_commit
    dicom_bot = double.state.user_by_name("dicom_bot")
    assert pipeline.ref == "dev" and dicom_bot is not None and pipeline.user_id == dicom_bot.id

    record = ledger.require(uid)
    assert record.state is State.MERGED
    assert record.details["pipeline:convert"]["status"] == "success"
    assert record.details["pipeline:convert"]["id"] == pipeline.id
    visited = [t.to_state for t in ledger.transitions(uid)]
    assert visited[-4:] == [State.CONVERTING, State.CONVERTED, State.VALIDATED, State.MERGED]
    converted = next(t for t in ledger.transitions(uid) if t.to_state is State.CONVERTED)
    assert converted.counts["commit"] == commit

    double.script_pipelines(["running", "failed"])
    assert main(["pipeline", "run", pub.session_path, "--workdir", str(site.settings.workdir)]) == 1
    record = ledger.require(uid)
    assert record.state is State.FAILED and "failed" in str(record.error)
    assert record.details["pipeline:convert"]["status"] == "failed"


def test_pipeline_run_derivatives_starts_the_bids_projects_derivative_jobs_on_dev(
        published: tuple[Site, Ledger, Published, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    site, ledger, pub, uid = published
    double = site.double
    convert_job(site, pub, tmp_path, merge=True)
    for name, value in (("BIDSFLUX_FORGE_TYPE", "gitlab"), ("CI_SERVER_URL", double.url),
                        ("GITLAB_DICOM_BOT_TOKEN", str(site.settings.gitlab_dicom_bot_token)),
                        ("BIDSFLUX_PIPELINE_POLL", "0.01"), ("BIDSFLUX_GITLAB_RETRIES", "1")):
        monkeypatch.setenv(name, value)
    double.script_pipelines(["running", "success"])
    before = ledger.require(uid).state

    code = main(["pipeline", "run", uid, "--pipeline", "derivatives", "--workdir", str(site.settings.workdir)])
    out = capsys.readouterr().out
    assert code == 0, out
    pipeline = [p for p in double.pipelines(f"{pub.group_path}/bids") if p.source == "api"][-1]
    variables = {v["key"]: v["value"] for v in pipeline.variables}
    assert pipeline.ref == "dev" and variables["BIDSFLUX_PIPELINE"] == "derivatives"
    assert variables["BIDSFLUX_BIDS_URL"] == pub.bids_url
    record = ledger.require(uid)
    assert record.details["pipeline:derivatives"]["status"] == "success"
    assert record.state is before  # derivatives do not move the conversion's state


def test_follow_conversion_resumes_the_same_pipeline(published: tuple[Site, Ledger, Published, str],
                                                     tmp_path: Path) -> None:
    site, ledger, pub, uid = published
    double, settings = site.double, site.settings
    forge = make_forge(settings)
    assert isinstance(forge, GitLabForge)
    double.script_pipelines(["running"] * 50)
    with pytest.raises(ForgeError) as caught:  # the worker's patience runs out: transient
        follow_conversion(settings.replace(pipeline_timeout=0.05), forge, ledger, uid, pub)
    assert caught.value.transient
    record = ledger.require(uid)
    assert record.state is State.CONVERTING
    started = [p for p in double.pipelines(f"{pub.group_path}/bids") if p.source == "api"]
    assert len(started) == 1 and record.details["pipeline_id"] == started[0].id

    convert_job(site, pub, tmp_path, merge=False)  # converted and valid, not merged (review)
    double.set_pipeline_status(started[0].id, "success")
    result = follow_conversion(settings, make_forge(settings), ledger, uid, pub)  # type: ignore[arg-type]
    assert result.ok and result.id == started[0].id
    assert len([p for p in double.pipelines(f"{pub.group_path}/bids") if p.source == "api"]) == 1
    assert ledger.require(uid).state is State.VALIDATED


def test_a_pipeline_without_the_converted_branch_fails(published: tuple[Site, Ledger, Published, str]) -> None:
    site, ledger, pub, uid = published
    site.double.script_pipelines(["success"])
    forge = make_forge(site.settings)
    assert isinstance(forge, GitLabForge)
    result = follow_conversion(site.settings, forge, ledger, uid, pub)
    assert result.ok
    record = ledger.require(uid)
    assert record.state is State.FAILED and f"convert/{pub.session_path} does not exist" in str(record.error)
