"""The GitLab double is strict where GitLab is: python-gitlab, unchanged, against it.

These pin the behaviour the forge and the bootstrap rely on, so a lenient
double cannot make them pass: status codes and bodies, scopes, pagination,
visibility, templates, protected branches, pipelines on push.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import warnings
from pathlib import Path

import gitlab
import pytest
import requests

from bidsflux.forge import credential_env

from ..gitlab_double import GitLabDouble
pytest_plugins = ["tests.gitlab_double.fixture"]


def client(double: GitLabDouble, token: str | None = None) -> gitlab.Gitlab:
    return gitlab.Gitlab(double.url, private_token=token or double.admin_token)


def test_authentication_and_scopes(gitlab_double: GitLabDouble) -> None:
    response = requests.get(f"{gitlab_double.url}/api/v4/user", timeout=10)
    assert response.status_code == 401 and response.json() == {"message": "401 Unauthorized"}
    with pytest.raises(gitlab.GitlabAuthenticationError):
        client(gitlab_double, "glpat-unknown").auth()
    gitlab_double.add_user("reader")
    reader = client(gitlab_double, gitlab_double.token_for("reader", ["read_api"]).token)
    reader.groups.list(get_all=True)  # read_api reads
    with pytest.raises(gitlab.GitlabCreateError) as caught:
        reader.groups.create({"name": "g", "path": "g"})
    assert caught.value.response_code == 403 and b'"scope": "api"' in caught.value.response_body
    expired = gitlab_double.token_for("reader", ["api"], expires_at=dt.date.today().isoformat()).token
    with pytest.raises(gitlab.GitlabAuthenticationError):
        client(gitlab_double, expired).auth()


def test_groups_nest_paginate_and_hide(gitlab_double: GitLabDouble) -> None:
    gl = client(gitlab_double)
    top = gl.groups.create({"name": "top", "path": "top"})
    for number in range(23):
        gl.groups.create({"name": f"s{number}", "path": f"s{number}", "parent_id": top.id})
    raw = requests.get(f"{gitlab_double.url}/api/v4/groups/{top.id}/subgroups", params={"per_page": 10},
                       headers={"PRIVATE-TOKEN": gitlab_double.admin_token}, timeout=10)
    assert raw.headers["X-Total"] == "23" and raw.headers["X-Total-Pages"] == "3"
    assert raw.headers["X-Next-Page"] == "2" and 'rel="next"' in raw.headers["Link"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # python-gitlab warns when links leave its base URL
        assert len(top.subgroups.list(get_all=True, per_page=10)) == 23
    assert gl.groups.get("top/s7").full_path == "top/s7"
    with pytest.raises(gitlab.GitlabCreateError) as caught:
        gl.groups.create({"name": "s7", "path": "s7", "parent_id": top.id})
    assert caught.value.response_code == 400 and "has already been taken" in caught.value.error_message
    with pytest.raises(gitlab.GitlabCreateError) as reserved:
        gl.groups.create({"name": "help", "path": "help"})
    assert "reserved name" in reserved.value.error_message
    gitlab_double.add_user("outsider")
    outsider = client(gitlab_double, gitlab_double.token_for("outsider", ["api"]).token)
    with pytest.raises(gitlab.GitlabGetError) as hidden:
        outsider.groups.get("top")
    assert hidden.value.response_code == 404
    with pytest.raises(gitlab.GitlabCreateError) as refused:
        outsider.groups.create({"name": "x", "path": "x", "parent_id": top.id})
    assert refused.value.response_code == 404


def test_users_members_variables_and_tokens(gitlab_double: GitLabDouble) -> None:
    gl = client(gitlab_double)
    user = gl.users.create({"username": "bot", "name": "bot", "email": "bot@x.invalid", "force_random_password": True})
    with pytest.raises(gitlab.GitlabCreateError) as conflict:
        gl.users.create({"username": "bot", "name": "b", "email": "b2@x.invalid", "force_random_password": True})
    assert conflict.value.response_code == 409
    group = gl.groups.create({"name": "g", "path": "g"})
    group.members.create({"user_id": user.id, "access_level": 40})
    with pytest.raises(gitlab.GitlabCreateError) as member:
        group.members.create({"user_id": user.id, "access_level": 30})
    assert member.value.response_code == 409
    with pytest.raises(gitlab.GitlabCreateError) as masked:
        group.variables.create({"key": "SHORT", "value": "abc", "masked": True})
    assert masked.value.response_code == 400
    group.variables.create({"key": "OK", "value": "a-long-value", "masked": True})
    with pytest.raises(gitlab.GitlabCreateError) as duplicate:
        group.variables.create({"key": "OK", "value": "again"})
    assert duplicate.value.response_code == 400
    too_long = (dt.date.today() + dt.timedelta(days=400)).isoformat()
    with pytest.raises(gitlab.GitlabCreateError) as lifetime:
        user.personal_access_tokens.create({"name": "t", "scopes": ["api"], "expires_at": too_long})
    assert lifetime.value.response_code == 422
    with pytest.raises(gitlab.GitlabCreateError) as scope:
        user.personal_access_tokens.create({"name": "t", "scopes": ["everything"]})
    assert scope.value.response_code == 400
    token = user.personal_access_tokens.create({"name": "t", "scopes": ["read_api"]})
    assert client(gitlab_double, token.token).personal_access_tokens.get("self").scopes == ["read_api"]


def test_templates_protection_and_pipelines_on_push(gitlab_double: GitLabDouble, tmp_path: Path) -> None:
    gl = client(gitlab_double)
    owner = gl.groups.create({"name": "site", "path": "site"})
    templates = gl.groups.create({"name": "tpl", "path": "tpl", "parent_id": owner.id})
    template = gl.projects.create({"name": "bids", "namespace_id": templates.id})
    work = tmp_path / "work"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0", "GIT_AUTHOR_NAME": "a",
           "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@x",
           **credential_env(gitlab_double.admin_token, "root")}
    subprocess.run(["git", "init", "-q", "-b", "dev", str(work)], check=True, env=env)
    (work / ".gitlab-ci.yml").write_text("convert:\n  script: [bidsflux ci convert]\n")
    subprocess.run(["git", "add", "."], cwd=work, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "ci"], cwd=work, check=True, env=env)
    subprocess.run(["git", "push", "-q", template.http_url_to_repo, "dev"], cwd=work, check=True, env=env)
    made = gitlab_double.pipelines("site/tpl/bids")
    assert [(p.source, p.ref, [j.name for j in p.jobs]) for p in made] == [("push", "dev", ["convert"])]

    elsewhere = gl.groups.create({"name": "other", "path": "other"})
    params = {"use_custom_template": True, "template_project_id": template.id,
              "group_with_project_templates_id": templates.id}
    with pytest.raises(gitlab.GitlabCreateError) as unconfigured:
        gl.projects.create({"name": "p", "namespace_id": owner.id, **params})
    assert "unknown or invalid" in str(unconfigured.value.error_message)
    owner.custom_project_templates_group_id = templates.id
    owner.save()
    with pytest.raises(gitlab.GitlabCreateError) as outside:
        gl.projects.create({"name": "p", "namespace_id": elsewhere.id, **params})
    assert "out of the hierarchy" in str(outside.value.error_message)
    project = gl.projects.create({"name": "p", "namespace_id": owner.id, **params})
    assert project.default_branch == "dev" and project.visibility == "private"

    project.protectedbranches.create({"name": "dev", "push_access_level": 40})
    pipeline = project.pipelines.create({"ref": "dev", "variables": [{"key": "BIDSFLUX_SESSION", "value": "s1"}]})
    assert pipeline.status == "pending" and pipeline.source == "api"
    assert [v.key for v in project.pipelines.get(pipeline.id).variables.list()] == ["BIDSFLUX_SESSION"]
    with pytest.raises(gitlab.GitlabCreateError) as missing_ref:
        project.pipelines.create({"ref": "nope"})
    assert missing_ref.value.response_code == 400
    gitlab_double.set_pipeline_status(pipeline.id, "success")
    assert project.pipelines.get(pipeline.id).status == "success"


def test_runners_use_authentication_tokens(gitlab_double: GitLabDouble) -> None:
    gl = client(gitlab_double)
    gl.auth()
    runner = gl.user.runners.create({"runner_type": "instance_type", "tag_list": ["bids"], "run_untagged": False})
    assert runner.token.startswith("glrt-")
    gl.runners.verify(runner.token)
    with pytest.raises(gitlab.GitlabVerifyError):
        gl.runners.verify("glrt-not-a-runner")
    with pytest.raises(gitlab.GitlabCreateError) as untagged:
        gl.user.runners.create({"runner_type": "instance_type", "run_untagged": False})
    assert untagged.value.response_code == 400
    gitlab_double.add_user("someone")
    someone = client(gitlab_double, gitlab_double.token_for("someone", ["create_runner", "read_user"]).token)
    someone.auth()
    with pytest.raises(gitlab.GitlabCreateError) as not_admin:
        someone.user.runners.create({"runner_type": "instance_type"})
    assert not_admin.value.response_code == 403
    # The deprecated registration-token flow is not there.
    legacy = requests.post(f"{gitlab_double.url}/api/v4/runners", data={"token": "x"}, timeout=10)
    assert legacy.status_code in {404, 405}
