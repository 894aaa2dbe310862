"""The GitLab forge's pure parts: layout, path checks, error translation, settings, credentials."""

from __future__ import annotations

import shlex
from pathlib import Path

import gitlab
import pytest
import requests

from bidsflux.errors import ForgeError, NamingError, SettingsError
from bidsflux.forge import LocalForge, credential_env, make_forge
from bidsflux.forge._git import git_transient
from bidsflux.forge._gitlab import GitLabAPIError, GitLabClient, enc
from bidsflux.forge.gitlab import GitLabForge, check_path, project_kind
from bidsflux.settings import Settings, load_settings

TOKEN = "glpat-unit-test-token-000"


@pytest.mark.parametrize(("path", "kind", "group"), [
    ("Doe-Jane/Memory/sourcedata/dicoms/1.2.3", "session", "Doe-Jane/Memory"),
    ("Doe-Jane/Memory/sourcedata/dicoms/study", "study", "Doe-Jane/Memory"),
    ("a/b/c/bids", "bids", "a/b/c"),
    ("Doe-Jane/Memory/derivatives/mriqc", "derivatives", "Doe-Jane/Memory"),
    ("Doe-Jane/Memory/qc/mriqc", "qc", "Doe-Jane/Memory"),
    ("bids-flux/ci-pipelines", None, "bids-flux"),
])
def test_project_kinds_follow_the_layout(path: str, kind: str | None, group: str) -> None:
    assert project_kind(path) == (kind, group)


@pytest.mark.parametrize("path", ["a/-b", "a/b.git", "a/..", "a//b", "a/b c", "a/b.atom", "a/é"])
def test_invalid_gitlab_paths_quarantine(path: str) -> None:
    with pytest.raises(NamingError):
        check_path(path, study="1.2.3")


def test_encoded_ids_are_one_segment() -> None:
    assert enc("Doe-Jane/Memory") == "Doe-Jane%2FMemory" and enc("convert/*") == "convert%2F%2A" and enc(7) == "7"


@pytest.mark.parametrize(("text", "transient"), [
    ("fatal: unable to access 'http://x/': Failed to connect to x port 80: Connection refused", True),
    ("fatal: unable to access 'http://x/': Could not resolve host: x", True),
    ("fatal: unable to access 'http://x/': The requested URL returned error: 503", True),
    ("error: RPC failed; HTTP 502 curl 22 The requested URL returned error: 502", True),
    ("fatal: unable to access 'http://x/': The requested URL returned error: 403", False),
    ("! [rejected] main -> main (non-fast-forward)", False),
    ("remote: GitLab: You are not allowed to push code to protected branches on this project.", False),
])
def test_git_failures_are_classified(text: str, transient: bool) -> None:
    assert git_transient(text) is transient


def _client() -> GitLabClient:
    # Constructing python-gitlab's client opens no connection.
    return GitLabClient("http://127.0.0.1:9", TOKEN, who="dicom_bot", retries=0)


def _http_error(code: int, body: bytes) -> gitlab.exceptions.GitlabHttpError:
    return gitlab.exceptions.GitlabHttpError(response_code=code, error_message="x", response_body=body)


def _raise(exc: Exception) -> None:
    raise exc


def test_a_missing_scope_is_named() -> None:
    body = (b'{"error":"insufficient_scope","error_description":"The request requires higher privileges than '
            b'provided by the access token.","scope":"api"}')
    with pytest.raises(GitLabAPIError) as caught:
        _client()._call("create group a", "1.2.3", lambda: _raise(_http_error(403, body)))
    error = caught.value
    assert error.status == 403 and error.scope == "api" and not error.transient
    assert "dicom_bot token lacks the scope api needed to create group a" in str(error)


@pytest.mark.parametrize(("code", "body", "transient", "words"), [
    (503, b'{"message":"503 Service Unavailable"}', True, "(503)"),
    (429, b'{"message":"Retry later"}', True, "(429)"),
    (401, b'{"message":"401 Unauthorized"}', False, "did not accept the dicom_bot token"),
    (403, b'{"message":"403 Forbidden"}', False, "not allowed to create group a"),
    (404, b'{"message":"404 Group Not Found"}', False, "404 Group Not Found"),
    (400, b'{"message":{"path":["has already been taken"]}}', False, "path has already been taken"),
    (409, b'{"message":"Member already exists"}', False, "Member already exists"),
    (422, b'{"message":"Expiration date must be before 2030-01-01"}', False, "Expiration date"),
])
def test_gitlab_errors_keep_status_and_message(code: int, body: bytes, transient: bool, words: str) -> None:
    with pytest.raises(GitLabAPIError) as caught:
        _client()._call("create group a", None, lambda: _raise(_http_error(code, body)))
    assert caught.value.status == code and caught.value.transient is transient and words in str(caught.value)


@pytest.mark.parametrize("exc", [requests.ConnectionError("refused"), requests.Timeout("slow")])
def test_unreachable_gitlab_is_transient(exc: Exception) -> None:
    with pytest.raises(ForgeError) as caught:
        _client()._call("read group a", "1.2.3", lambda: _raise(exc))
    assert caught.value.transient and "unreachable" in str(caught.value) and TOKEN not in str(caught.value)


def test_the_token_never_reaches_a_message() -> None:
    body = ('{"message":"token ' + TOKEN + ' is bad"}').encode()
    with pytest.raises(GitLabAPIError) as caught:
        _client()._call("read group a", None, lambda: _raise(_http_error(400, body)))
    assert TOKEN not in str(caught.value) and "***" in str(caught.value)


def test_forge_type_chooses_the_forge(tmp_path: Path) -> None:
    local = Settings().replace(workdir=tmp_path, forge_token=TOKEN)
    assert isinstance(make_forge(local, "http://127.0.0.1:1"), LocalForge)
    with pytest.raises(ForgeError):
        make_forge(local)
    with pytest.raises(SettingsError) as caught:
        make_forge(local.replace(forge_type="gitlab"))
    assert "CI_SERVER_URL" in str(caught.value) and "GITLAB_DICOM_BOT_TOKEN" in str(caught.value)
    gitlab_settings = local.replace(forge_type="gitlab", gitlab_url="http://127.0.0.1:9", gitlab_dicom_bot_token=TOKEN)
    assert isinstance(make_forge(gitlab_settings), GitLabForge)
    with pytest.raises(SettingsError, match="BIDSFLUX_GITLAB_SSH_KEY"):
        make_forge(gitlab_settings.replace(gitlab_push="ssh"))


def test_gitlab_settings_load_and_refuse_tokens_in_urls(tmp_path: Path) -> None:
    settings = load_settings({"BIDSFLUX_FORGE_TYPE": "gitlab", "CI_SERVER_URL": "https://gitlab.example.org/",
                              "GITLAB_DICOM_BOT_TOKEN": TOKEN}, secrets_dir=tmp_path)
    assert settings.gitlab_url == "https://gitlab.example.org" and settings.gitlab_dicom_bot_token == TOKEN
    assert TOKEN not in repr(settings)
    with pytest.raises(SettingsError) as caught:
        load_settings({"CI_SERVER_URL": f"https://oauth2:{TOKEN}@gitlab.example.org", "BIDSFLUX_FORGE_TYPE": "svn",
                       "BIDSFLUX_GITLAB_TOKEN_DAYS": "400"}, secrets_dir=tmp_path)
    message = str(caught.value)
    assert TOKEN not in message
    assert "CI_SERVER_URL" in message and "BIDSFLUX_FORGE_TYPE" in message and "BIDSFLUX_GITLAB_TOKEN_DAYS" in message
    (tmp_path / "gitlab_bids_bot_token").write_text("from-a-docker-secret\n")
    assert load_settings({}, secrets_dir=tmp_path).gitlab_bids_bot_token == "from-a-docker-secret"


def test_pushes_authenticate_through_the_environment(tmp_path: Path) -> None:
    settings = Settings().replace(workdir=tmp_path, forge_type="gitlab", gitlab_url="http://127.0.0.1:9",
                                  gitlab_dicom_bot_token=TOKEN)
    env = GitLabForge(settings).git_env()
    assert env["BIDSFLUX_FORGE_TOKEN"] == TOKEN and env["BIDSFLUX_FORGE_USER"] == "dicom_bot"
    assert all(TOKEN not in value for key, value in env.items() if key != "BIDSFLUX_FORGE_TOKEN")
    assert env == credential_env(TOKEN, "dicom_bot")

    key = tmp_path / "id ed25519"
    ssh = GitLabForge(settings.replace(gitlab_push="ssh", gitlab_ssh_key=key,
                                       gitlab_ssh_known_hosts=tmp_path / "known_hosts")).git_env()
    command = shlex.split(ssh["GIT_SSH_COMMAND"])
    assert command[:3] == ["ssh", "-i", str(key)] and "StrictHostKeyChecking=yes" in command
    assert "BIDSFLUX_FORGE_TOKEN" not in ssh
