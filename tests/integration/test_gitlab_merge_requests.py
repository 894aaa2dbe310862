"""Merge requests on GitLab (the double), opened the way the conversion job opens them: with push options.

Each test publishes one study, then does what the ``convert`` job does to the
BIDS project as bids_bot: branch ``convert/<session>`` off ``dev``, commit,
and push with the job's own :func:`push_for_review` (push options; the
job's credentials come from its environment).  What a data manager would see
is read back through the REST API.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gitlab
import pytest
import requests

from bidsflux._proc import git, run
from bidsflux.errors import ConvertError
from bidsflux.forge import credential_env, make_forge
from bidsflux.forge.publish import Published, publish_session
from bidsflux.convert.job import push_for_review
from bidsflux.index import index_batch
from bidsflux.scanner import StudySpec, study_uid, write_study

from ..gitlab_double.site import Site

pytest_plugins = ["tests.gitlab_double.fixture"]

TITLE = "Convert session 2.25.1"
DESCRIPTION = ("Study 2.25.1: 5 series converted with reproin (builtin, sha256 0123456789ab); "
               "dcm2niix v1.0.20240202, heudiconv 1.3.2")


@dataclass
class Study:
    site: Site
    pub: Published
    uid: str
    project: str  # the BIDS project's path
    clone: Path  # the job's clone, as bids_bot

    @property
    def branch(self) -> str:
        return f"convert/{self.uid}"

    def api(self, path: str, token: str | None = None, **params: Any) -> requests.Response:
        token = token or str(self.site.settings.gitlab_dicom_bot_token)
        return requests.get(f"{self.site.double.url}/api/v4/projects/{self.project.replace('/', '%2F')}{path}",
                            params=params, headers={"PRIVATE-TOKEN": token}, timeout=10)

    def commit(self, name: str) -> str:
        (self.clone / name).write_text(f"{name}\n")
        git("add", name, cwd=self.clone)
        git("commit", "-q", "-m", f"[bids-flux] {name}", cwd=self.clone)
        return git("rev-parse", "HEAD", cwd=self.clone)

    def push(self, target: str, title: str = TITLE, description: str = DESCRIPTION) -> str:
        """The convert job's push of ``convert/<session>``, push options included; git's messages."""
        return push_for_review(self.clone, self.branch, target, title, description, study=self.uid)


@pytest.fixture
def study(gitlab_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Study]:
    settings = gitlab_site.settings
    spec = StudySpec(seed=71)
    write_study(spec, tmp_path / "batch")
    result = index_batch(settings, study_uid(spec), tmp_path / "batch")
    pub = publish_session(settings, make_forge(settings), result)
    # The CI job's environment: bids_bot's token through the credential helper, an isolated HOME.
    for name, value in {"HOME": str(tmp_path), "GIT_AUTHOR_NAME": "bids_bot", "GIT_AUTHOR_EMAIL": "b@x.invalid",
                        "GIT_COMMITTER_NAME": "bids_bot", "GIT_COMMITTER_EMAIL": "b@x.invalid",
                        **credential_env(gitlab_site.token("gitlab_bids_bot_token"), "bids_bot")}.items():
        monkeypatch.setenv(name, value)
    clone = tmp_path / "job" / "bids"
    run(["git", "clone", "-q", "-b", "dev", pub.bids_url, str(clone)])
    found = Study(gitlab_site, pub, result.study_uid, f"{pub.group_path}/bids", clone)
    git("checkout", "-q", "-B", found.branch, cwd=clone)
    yield found


def test_the_convert_push_opens_one_merge_request_which_the_merge_into_dev_closes(study: Study) -> None:
    double = study.site.double
    head = study.commit("sub-01.json")
    pushed = study.push("dev")
    assert f"View merge request for {study.branch}" in pushed

    listed = study.api("/merge_requests")
    assert listed.status_code == 200 and listed.headers["X-Total"] == "1"
    (mr,) = listed.json()
    assert (mr["iid"], mr["state"], mr["source_branch"], mr["target_branch"]) == (1, "opened", study.branch, "dev")
    assert (mr["title"], mr["description"], mr["sha"]) == (TITLE, DESCRIPTION, head)
    assert mr["author"]["username"] == "bids_bot" and mr["force_remove_source_branch"] is True
    assert mr["project_id"] == double.project(study.project).id  # type: ignore[union-attr]
    assert mr["web_url"] == f"{double.url}/{study.project}/-/merge_requests/1"
    assert study.api("/merge_requests/1").json() == mr

    # A re-run pushes the branch again: the same merge request follows it, with the new title.
    again = study.commit("sub-01_T1w.json")
    study.push("dev", title=f"{TITLE} (again)")
    (updated,) = study.api("/merge_requests", state="opened").json()
    assert (updated["iid"], updated["sha"], updated["title"]) == (1, again, f"{TITLE} (again)")
    assert len(double.merge_requests(study.project)) == 1
    notes = study.api("/merge_requests/1/notes").json()
    assert [(n["body"], n["system"]) for n in notes] == [("added 1 commit", True)]

    # The merge job: merge the converted commit into dev with a merge commit, push dev.
    git("checkout", "-q", "-B", "dev", "origin/dev", cwd=study.clone)
    git("merge", "-q", "--no-ff", "-m", f"[bids-flux] Merge {study.branch} into dev", again, cwd=study.clone)
    merge_commit = git("rev-parse", "HEAD", cwd=study.clone)
    git("push", "-q", "origin", "dev", cwd=study.clone)
    merged = study.api("/merge_requests/1").json()
    assert merged["state"] == "merged" and merged["merged_at"] and merged["merge_commit_sha"] == merge_commit
    assert study.api("/merge_requests", state="opened").json() == []
    assert [m["iid"] for m in study.api("/merge_requests", state="merged", target_branch="dev").json()] == [1]


def test_an_unknown_target_is_reported_on_the_push_and_opens_nothing(study: Study) -> None:
    head = study.commit("sub-01.json")
    # GitLab accepts the push and only warns about the push options: the job fails, naming why.
    with pytest.raises(ConvertError) as refused:
        study.push("no-such-branch")
    assert "was pushed but GitLab opened no merge request" in str(refused.value)
    assert f"Target branch {study.project}:no-such-branch does not exist" in str(refused.value)
    assert study.site.double.branches(study.site.double.project(study.project))[study.branch] == head  # type: ignore[arg-type]
    assert study.api("/merge_requests").json() == []
    assert study.api("/merge_requests").headers["X-Total"] == "0"


def test_merge_request_routes_check_tokens_and_parameters(study: Study) -> None:
    double, site = study.site.double, study.site
    study.commit("sub-01.json")
    study.push("dev")
    url = f"{double.url}/api/v4/projects/{double.project(study.project).id}/merge_requests"  # type: ignore[union-attr]
    dicom_bot = {"PRIVATE-TOKEN": str(site.settings.gitlab_dicom_bot_token)}

    assert requests.get(url, timeout=10).status_code == 401
    # bids_bot's token is for git only (write_repository): the REST API refuses it.
    refused = study.api("/merge_requests", token=site.token("gitlab_bids_bot_token"))
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    double.add_user("outsider")
    outsider = double.token_for("outsider", ["api"]).token
    assert study.api("/merge_requests", token=outsider).status_code == 404
    assert study.api("/merge_requests", state="mine").status_code == 400

    gl = gitlab.Gitlab(double.url, private_token=str(site.settings.gitlab_dicom_bot_token))
    project = gl.projects.get(study.project)
    with pytest.raises(gitlab.GitlabGetError) as unknown:
        project.mergerequests.get(2)
    assert unknown.value.response_code == 404
    with pytest.raises(gitlab.GitlabGetError) as no_project:
        gl.projects.get(f"{study.project}-nope")
    assert no_project.value.response_code == 404

    mr = project.mergerequests.get(1)
    assert mr.title == TITLE and mr.author["username"] == "bids_bot"
    no_body = requests.post(f"{url}/1/notes", data={}, headers=dicom_bot, timeout=10)
    assert no_body.status_code == 400 and no_body.json() == {"error": "body is missing"}
    assert requests.post(f"{url}/9/notes", data={"body": "x"}, headers=dicom_bot, timeout=10).status_code == 404
    note = mr.notes.create({"body": "BIDS validator: 0 errors"})
    assert note.author["username"] == site.settings.gitlab_bot_username
    listed = requests.get(f"{url}/1/notes", headers=dicom_bot, timeout=10)
    assert listed.headers["X-Total"] == "1" and [n["body"] for n in listed.json()] == ["BIDS validator: 0 errors"]
    assert project.mergerequests.get(1).user_notes_count == 1


def test_a_rerun_rebuilds_the_branch_from_dev_and_the_merge_request_follows(study: Study) -> None:
    study.commit("sub-01.json")
    study.push("dev")
    # A re-run starts again from dev: the new branch does not contain the old commit (a forced push).
    git("checkout", "-q", "-B", study.branch, "origin/dev", cwd=study.clone)
    rebuilt = study.commit("sub-01_T1w.json")
    study.push("dev", title=f"{TITLE} (re-run)")
    assert study.site.double.branches(study.site.double.project(study.project))[study.branch] == rebuilt  # type: ignore[arg-type]
    (mr,) = study.api("/merge_requests", state="opened").json()
    assert (mr["iid"], mr["sha"], mr["title"]) == (1, rebuilt, f"{TITLE} (re-run)")
