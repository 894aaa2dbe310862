"""Publishing studies to GitLab (the double): layout, templates, bots, protection, failures.

Each study is indexed for real from the synthetic scanner's files, then
published with the GitLab forge and the dicom_bot token bootstrap issued.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bidsflux.errors import ForgeError, NamingError
from bidsflux.forge import credential_env, make_forge
from bidsflux.forge.gitlab import GitLabForge
from bidsflux.forge.publish import Published, publish_session
from bidsflux.index import IndexResult, index_batch
from bidsflux.ledger import Ledger, State
from bidsflux.scanner import StudySpec, study_uid, write_study
from bidsflux.settings import Settings

from ..gitlab_double.site import Site

pytest_plugins = ["tests.gitlab_double.fixture"]


def indexed(settings: Settings, tmp_path: Path, spec: StudySpec) -> IndexResult:
    batch = tmp_path / f"batch-{spec.seed}"
    write_study(spec, batch)
    return index_batch(settings, study_uid(spec), batch)


def git_out(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_two_studies_in_two_groups_land_in_their_projects(gitlab_site: Site, tmp_path: Path) -> None:
    site, double = gitlab_site, gitlab_site.double
    forge = make_forge(site.settings)
    assert isinstance(forge, GitLabForge)
    memory = indexed(site.settings, tmp_path, StudySpec(seed=11, referring_physician="Doe^Jane",
                                                        study_description="Doe^Memory"))
    vision = indexed(site.settings, tmp_path, StudySpec(seed=12, referring_physician="Smith^Ann",
                                                        study_description="Smith^Vision"))
    published = {r.study_uid: publish_session(site.settings, forge, r) for r in (memory, vision)}

    expected = set()
    for result, group in ((memory, "Doe-Jane/Memory"), (vision, "Smith-Ann/Vision")):
        assert result.names.group_path == group
        session = f"{group}/sourcedata/dicoms/{result.study_uid}"
        expected |= {session, f"{group}/sourcedata/dicoms/study", f"{group}/bids"}
        pub = published[result.study_uid]
        assert pub.bids_url == f"{double.url}/{group}/bids.git" and pub.group_path == group
        # The session's commit (with the template's README merged in) is what the superdataset registers.
        session_project = double.project(session)
        assert session_project is not None and session_project.visibility == "private"
        assert double.branches(session_project)["main"] == pub.session_commit
        assert "README.md" in git_out("ls-tree", "--name-only", "main", cwd=double.repo_dir(session_project))
        study = double.project(f"{group}/sourcedata/dicoms/study")
        assert study is not None
        assert git_out("ls-tree", "main", result.study_uid, cwd=double.repo_dir(study)).split()[2] == pub.session_commit
        gitmodules = git_out("show", "main:.gitmodules", cwd=double.repo_dir(study))
        assert f"url = {pub.session_url}" in gitmodules
        bids = double.project(f"{group}/bids")
        assert bids is not None and bids.default_branch == "dev"
        assert set(bids.protected) == {"base", "dev", "convert/*"}
        assert all(r.push_access_level == 40 for r in bids.protected.values())
        # Nobody rewrites base or dev; a re-run of a conversion rebuilds its convert/ branch.
        assert {n: r.allow_force_push for n, r in bids.protected.items()} == {
            "base": False, "dev": False, "convert/*": True}
        assert ".gitlab-ci.yml" in git_out("ls-tree", "--name-only", "dev", cwd=double.repo_dir(bids))
        assert [p.ref for p in bids.pipelines if p.source == "push"] == ["base", "dev"]
        # bids_bot can push conversions into the study group; the group has its CI/CD variables.
        group_record = double.group(group)
        bids_bot = double.state.user_by_name("bids_bot")
        assert group_record is not None and bids_bot is not None
        assert group_record.members[bids_bot.id] == 40 and group_record.visibility == "private"
        assert group_record.variables["BIDSFLUX_STUDY_GROUP"].value == group
        # No token in the dataset's git configuration.
        assert site.settings.gitlab_dicom_bot_token not in (result.dataset / ".git" / "config").read_text()
    made = {p for p in double.projects() if not p.startswith("bids-flux/")}
    assert made == expected

    # Publishing again (a restart, an identical resend) pushes and commits nothing.
    heads = {p: double.branches(double.project(p)) for p in made}  # type: ignore[arg-type]
    again = publish_session(site.settings, make_forge(site.settings), memory)
    assert again == published[memory.study_uid]
    assert {p: double.branches(double.project(p)) for p in made} == heads  # type: ignore[arg-type]


def test_hostile_group_names_are_sanitised_or_quarantined(gitlab_site: Site, tmp_path: Path) -> None:
    site, double = gitlab_site, gitlab_site.double
    forge = make_forge(site.settings)
    # Separators and '..' in a tag never become path segments: one sanitised group.
    smuggled = indexed(site.settings, tmp_path, StudySpec(seed=21, referring_physician="Evil/../../x%2F",
                                                          study_description="Doe^Memory"))
    assert smuggled.names.group_path == "Evil-.-.-x-2F/Memory"
    publish_session(site.settings, forge, smuggled)
    top = smuggled.names.group_path.split("/")[0]
    assert double.group(top) is not None and ".." not in top
    assert {p.split("/")[0] for p in double.projects()} == {"bids-flux", top}

    # A name GitLab keeps for itself ('api' after sanitising '../../api') quarantines the study.
    reserved = indexed(site.settings, tmp_path, StudySpec(seed=22, referring_physician="../../api",
                                                          study_description="Doe^Memory"))
    assert reserved.names.group_path == "api/Memory"
    with pytest.raises(NamingError, match="reserved name"):
        publish_session(site.settings, forge, reserved)
    assert double.group("api") is None and not [p for p in double.projects() if p.startswith("api/")]


def test_a_token_missing_a_scope_names_the_scope(gitlab_site: Site, tmp_path: Path) -> None:
    double = gitlab_site.double
    narrow = double.token_for("dicom_bot", ["read_api", "write_repository"]).token
    settings = gitlab_site.settings.replace(gitlab_dicom_bot_token=narrow)
    result = indexed(settings, tmp_path, StudySpec(seed=31))
    with pytest.raises(ForgeError) as caught:
        publish_session(settings, make_forge(settings), result)
    assert "lacks the scope api" in str(caught.value) and "dicom_bot" in str(caught.value)
    assert not caught.value.transient and narrow not in str(caught.value)
    assert not [p for p in double.projects() if not p.startswith("bids-flux/")]


def _publish_step(settings: Settings, ledger: Ledger, result: IndexResult) -> Published | None:
    """What the worker does at this stage: publish, or leave the study where it is on a transient error."""
    try:
        published = publish_session(settings, make_forge(settings), result)
    except ForgeError as exc:
        if not exc.transient:
            raise
        return None
    ledger.transition(result.study_uid, State.PUBLISHED, details={"bids_url": published.bids_url})
    return published


def test_gitlab_unreachable_is_transient_and_the_study_waits_in_stored(gitlab_site: Site, tmp_path: Path) -> None:
    double, settings = gitlab_site.double, gitlab_site.settings
    result = indexed(settings, tmp_path, StudySpec(seed=41))
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.transition(result.study_uid, State.STORED)
    transitions = len(ledger.transitions(result.study_uid))

    double.pause()  # connection refused
    with pytest.raises(ForgeError) as caught:
        publish_session(settings, make_forge(settings), result)
    assert caught.value.transient and "unreachable" in str(caught.value)
    assert _publish_step(settings, ledger, result) is None
    assert ledger.require(result.study_uid).state is State.STORED
    assert len(ledger.transitions(result.study_uid)) == transitions

    double.resume()
    double.fail_next(1, 503)  # a restarting GitLab: python-gitlab retries it
    assert _publish_step(settings, ledger, result) is not None
    assert ledger.require(result.study_uid).state is State.PUBLISHED
    assert ("GET", "/api/v4/personal_access_tokens/self", 503) in double.api_requests()

    double.fail_next(10, 502)  # still failing after the retries: transient, for the worker
    with pytest.raises(ForgeError) as failing:
        publish_session(settings, make_forge(settings), result)
    assert failing.value.transient and "(502)" in str(failing.value)
    ledger.close()


def test_protected_branches_hold_against_other_pushers(gitlab_site: Site, tmp_path: Path) -> None:
    double, settings = gitlab_site.double, gitlab_site.settings
    result = indexed(settings, tmp_path, StudySpec(seed=51))
    published = publish_session(settings, make_forge(settings), result)
    bids = double.project(f"{published.group_path}/bids")
    assert bids is not None
    double.add_user("dev_user")
    bids.members[double.state.user_by_name("dev_user").id] = 30  # type: ignore[union-attr]
    developer = double.token_for("dev_user", ["write_repository"]).token
    bids_bot = gitlab_site.token("gitlab_bids_bot_token")
    clone = tmp_path / "clone"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    subprocess.run(["git", "clone", "-q", "-b", "dev", published.bids_url, str(clone)], check=True,
                   env={**env, **credential_env(bids_bot, "bids_bot")})
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "convert"], cwd=clone, check=True, env=env)

    def push(token: str, *refspec: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "push", "origin", *refspec], cwd=clone, capture_output=True, text=True,
                              env={**env, **credential_env(token, "someone")})

    refused = push(developer, "HEAD:refs/heads/convert/x")
    assert refused.returncode != 0 and "not allowed to push code to protected branches" in refused.stderr
    assert push(bids_bot, "HEAD:refs/heads/convert/x").returncode == 0
    assert push(bids_bot, "HEAD:refs/heads/dev").returncode == 0
    forced = push(bids_bot, "+HEAD~1:refs/heads/dev")
    assert forced.returncode != 0 and "force push" in forced.stderr
    # A re-run of the conversion rebuilds convert/x from dev: bids_bot may, a developer still may not.
    assert push(bids_bot, "+HEAD~1:refs/heads/convert/x").returncode == 0
    assert push(developer, "+HEAD:refs/heads/convert/x").returncode != 0

    # A project protected by an earlier version (no force pushes on convert/*) is aligned when published again.
    bids.protected["convert/*"].allow_force_push = False
    publish_session(settings, make_forge(settings), result)
    assert bids.protected["convert/*"].allow_force_push


def test_the_routes_derivative_projects_are_made_where_bids_bot_can_push(gitlab_site: Site, tmp_path: Path) -> None:
    double, settings = gitlab_site.double, gitlab_site.settings
    result = indexed(settings, tmp_path, StudySpec(seed=53))
    published = publish_session(settings, make_forge(settings), result, derivatives=["mriqc", "qc/mriqc", "mriqc"])
    group = published.group_path
    made = {p for p in double.projects() if p.startswith(f"{group}/") and "/sourcedata/" not in p}
    assert made == {f"{group}/bids", f"{group}/derivatives/mriqc", f"{group}/qc/mriqc"}
    for path in (f"{group}/derivatives/mriqc", f"{group}/qc/mriqc"):
        project = double.project(path)
        assert project is not None and project.visibility == "private"
        # Made from the site's template for its kind, like every project of the layout.
        assert "README.md" in git_out("ls-tree", "--name-only", "HEAD", cwd=double.repo_dir(project))

    # The CI job that fills a derivative pushes as bids_bot, which could not have created the project.
    bids_bot = gitlab_site.token("gitlab_bids_bot_token")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           **credential_env(bids_bot, "bids_bot")}
    url = published.bids_url.removesuffix("bids.git") + "derivatives/mriqc.git"
    clone = tmp_path / "mriqc"
    subprocess.run(["git", "clone", "-q", url, str(clone)], check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "[bids-flux] derivatives mriqc"], cwd=clone,
                   check=True, env=env)
    pushed = subprocess.run(["git", "push", "origin", "HEAD"], cwd=clone, capture_output=True, text=True, env=env)
    assert pushed.returncode == 0, pushed.stderr

    # Publishing again makes nothing new.
    publish_session(settings, make_forge(settings), result, derivatives=["mriqc", "qc/mriqc"])
    assert {p for p in double.projects() if p.startswith(f"{group}/") and "/sourcedata/" not in p} == made
