"""Site bootstrap and runners against the GitLab double, each run twice: the second changes nothing."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bidsflux.cli import main
from bidsflux.deploy import bootstrap
from bidsflux.errors import ForgeError

from ..gitlab_double import GitLabDouble
from ..gitlab_double.site import ROOT, SOURCES, site_settings

pytest_plugins = ["tests.gitlab_double.fixture"]

WRITES = {"POST", "PUT", "DELETE", "PATCH"}


def snapshot(double: GitLabDouble) -> dict[str, Any]:
    """Everything bootstrap may touch, comparable between runs."""
    state = double.state
    with state.lock:
        return {
            "users": sorted((u.username, u.can_create_group) for u in state.users.values()),
            "tokens": sorted((t.user_id, t.name, tuple(t.scopes), t.revoked, t.token) for t in state.tokens.values()),
            "groups": sorted((state.group_full_path(g), tuple(sorted(g.members.items())),
                              g.custom_project_templates_group_id) for g in state.groups.values()),
            "projects": sorted((state.project_full_path(p), p.default_branch, tuple(sorted(double.branches(p).items())))
                               for p in state.projects.values()),
            "variables": sorted((v.key, v.value, v.masked, v.protected) for v in double.instance_variables.values()),
            "settings": dict(state.settings),
            "runners": sorted((r.description, tuple(r.tag_list), r.run_untagged, r.token)
                              for r in state.runners.values()),
        }


@pytest.fixture
def site_env(gitlab_double: GitLabDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment `bidsflux deploy` reads at a site; the admin token as a secret file."""
    admin = tmp_path / "admin-token"
    admin.write_text(gitlab_double.admin_token + "\n")
    monkeypatch.setenv("CI_SERVER_URL", gitlab_double.url)
    monkeypatch.setenv("GITLAB_ADMIN_TOKEN_FILE", str(admin))
    monkeypatch.setenv("BIDSFLUX_GITLAB_RETRIES", "1")
    monkeypatch.chdir(ROOT)  # ci-pipelines/ and deploy/ are found from the repository's root
    return tmp_path


def test_bootstrap_twice_the_second_run_changes_nothing(gitlab_double: GitLabDouble, site_env: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    secrets = site_env / "secrets"
    args = ["deploy", "init", "--workdir", str(site_env / "work"), "--secrets-dir", str(secrets)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "created  user dicom_bot" in first and "created  user bids_bot" in first

    double, state = gitlab_double, gitlab_double.state
    dicom, bids = state.user_by_name("dicom_bot"), state.user_by_name("bids_bot")
    assert dicom and bids and dicom.can_create_group and not bids.can_create_group
    active = {state.users[t.user_id].username: t for t in state.tokens.values() if t.name == "bids-flux"}
    assert active["dicom_bot"].scopes == ["api"] and active["bids_bot"].scopes == ["write_repository"]
    for name, user in (("gitlab_dicom_bot_token", "dicom_bot"), ("gitlab_bids_bot_token", "bids_bot")):
        assert (secrets / name).read_text().strip() == active[user].token
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o600
        assert active[user].token not in first  # written to files, never shown
    ops = double.group("bids-flux")
    assert ops is not None and ops.members[dicom.id] == ops.members[bids.id] == 20
    templates = double.group("bids-flux/project-templates")
    assert templates is not None and ops.custom_project_templates_group_id == templates.id
    assert state.settings["custom_project_templates_group_id"] == templates.id
    bids_template = double.project("bids-flux/project-templates/bids")
    assert bids_template is not None and bids_template.default_branch == "dev"
    assert set(double.branches(bids_template)) == {"base", "dev"}
    assert double.project("bids-flux/ci-pipelines") is not None
    token_var = double.instance_variables["BIDS_API_TOKEN"]
    assert token_var.value == active["bids_bot"].token and token_var.masked and token_var.protected
    assert double.instance_variables["BIDSFLUX_CI_PIPELINES"].value == "bids-flux/ci-pipelines"

    before, requests = snapshot(double), len(double.api_requests())
    assert main(args) == 0
    second = capsys.readouterr().out
    assert second.strip().splitlines()[-1].startswith("nothing changed")
    assert all(line.lstrip().startswith("unchanged") for line in second.strip().splitlines()[:-1])
    assert snapshot(double) == before
    assert not [r for r in double.api_requests()[requests:] if r[0] in WRITES]


def test_printed_tokens_are_shown_once(gitlab_double: GitLabDouble, site_env: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    args = ["deploy", "init", "--workdir", str(site_env / "work"), "--print-tokens"]
    assert main(args) == 0
    first = capsys.readouterr().out
    tokens = [t.token for t in gitlab_double.state.tokens.values() if t.name == "bids-flux"]
    assert len(tokens) == 2 and all(first.count(token) == 1 for token in tokens)
    assert not (site_env / "work" / "secrets").exists()

    before = snapshot(gitlab_double)
    assert main(args) == 0
    second = capsys.readouterr().out
    assert not any(token in second for token in tokens)
    assert "value was handed out when it was made" in second and "nothing changed" in second
    assert snapshot(gitlab_double) == before


def test_rotate_issues_new_tokens_and_revokes_the_old(gitlab_double: GitLabDouble, tmp_path: Path) -> None:
    settings = site_settings(gitlab_double, tmp_path / "work")
    secrets = tmp_path / "secrets"
    bootstrap(settings, sources=SOURCES, secrets_dir=secrets)
    old = (secrets / "gitlab_bids_bot_token").read_text().strip()
    report = bootstrap(settings, sources=SOURCES, secrets_dir=secrets, rotate=True)
    new = (secrets / "gitlab_bids_bot_token").read_text().strip()
    assert new != old and report.changed and not report.failed
    assert gitlab_double.state.token_by_value(old).revoked  # type: ignore[union-attr]
    assert gitlab_double.instance_variables["BIDS_API_TOKEN"].value == new


def test_a_revoked_bot_token_is_replaced(gitlab_double: GitLabDouble, tmp_path: Path) -> None:
    settings = site_settings(gitlab_double, tmp_path / "work")
    secrets = tmp_path / "secrets"
    bootstrap(settings, sources=SOURCES, secrets_dir=secrets)
    old = (secrets / "gitlab_dicom_bot_token").read_text().strip()
    gitlab_double.state.token_by_value(old).revoked = True  # type: ignore[union-attr]
    report = bootstrap(settings, sources=SOURCES, secrets_dir=secrets)
    changed = [s for s in report.steps if s.outcome != "unchanged"]
    assert [s.what for s in changed] == ["token of dicom_bot (api)"]
    assert (secrets / "gitlab_dicom_bot_token").read_text().strip() != old


def test_the_admin_token_needs_scope_api_and_an_administrator(gitlab_double: GitLabDouble, tmp_path: Path) -> None:
    narrow = gitlab_double.token_for("root", ["read_api"]).token
    settings = site_settings(gitlab_double, tmp_path / "work").replace(gitlab_admin_token=narrow)
    with pytest.raises(ForgeError) as caught:
        bootstrap(settings, sources=SOURCES, secrets_dir=tmp_path / "s")
    assert "lacks the scope api" in str(caught.value) and narrow not in str(caught.value)

    gitlab_double.add_user("alice")
    plain = gitlab_double.token_for("alice", ["api"]).token
    with pytest.raises(ForgeError, match="not a GitLab administrator"):
        bootstrap(settings.replace(gitlab_admin_token=plain), sources=SOURCES, secrets_dir=tmp_path / "s")
    assert gitlab_double.state.user_by_name("dicom_bot") is None


def _config(path: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in tomllib.loads(path.read_text())["runners"]}


def test_runners_twice_from_the_runners_file(gitlab_double: GitLabDouble, site_env: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = site_env / "runners"
    args = ["deploy", "runners", "--workdir", str(site_env / "work"), "--output", str(out)]
    assert main(args) == 0
    runners = {r.description: r for r in gitlab_double.state.runners.values()}
    assert {name: (r.tag_list, r.run_untagged, r.access_level, r.runner_type) for name, r in runners.items()} == {
        "processing-bids": (["bids"], False, "ref_protected", "instance_type"),
        "processing-gpu": (["gpu"], False, "ref_protected", "instance_type"),
        "data-dind": (["dind"], False, "not_protected", "instance_type"),
        "data-untagged": ([], True, "not_protected", "instance_type"),
    }
    processing, data = _config(out / "processing" / "config.toml"), _config(out / "data" / "config.toml")
    assert set(processing) == {"processing-bids", "processing-gpu"} and set(data) == {"data-dind", "data-untagged"}
    for name, section in {**processing, **data}.items():
        assert section["token"] == runners[name].token and section["token"].startswith("glrt-")
        assert section["url"] == gitlab_double.url and section["executor"] == "docker"
    assert processing["processing-gpu"]["docker"]["gpus"] == "all" and data["data-dind"]["docker"]["privileged"]
    assert stat.S_IMODE((out / "data" / "config.toml").stat().st_mode) == 0o600
    capsys.readouterr()

    before = snapshot(gitlab_double)
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("nothing changed")
    assert snapshot(gitlab_double) == before


def test_runner_drift_is_corrected_and_a_lost_token_reset(gitlab_double: GitLabDouble, site_env: Path) -> None:
    out = site_env / "runners"
    args = ["deploy", "runners", "--workdir", str(site_env / "work"), "--output", str(out)]
    assert main(args) == 0
    runners = {r.description: r for r in gitlab_double.state.runners.values()}
    runners["processing-bids"].tag_list = ["bids", "stray"]
    old_token = runners["data-dind"].token
    (out / "data" / "config.toml").unlink()

    assert main(args) == 0
    assert runners["processing-bids"].tag_list == ["bids"]
    assert runners["data-dind"].token != old_token
    assert _config(out / "data" / "config.toml")["data-dind"]["token"] == runners["data-dind"].token
    assert len(gitlab_double.state.runners) == 4  # reset, not created again


def test_bootstrap_gives_the_jobs_the_indexers_s3_store(gitlab_double: GitLabDouble, site_env: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    access, secret = "bidsfluxAccessKey0123", "bidsfluxSecretKey0123456789abcdefABCDEF"
    for name, value in (("bidsflux_s3_access_key", access), ("bidsflux_s3_secret_key", secret)):
        (site_env / name).write_text(value + "\n")
    monkeypatch.setenv("BIDSFLUX_STORAGE_TYPE", "s3")
    monkeypatch.setenv("BIDSFLUX_S3_ENDPOINT_URL", "https://s3.example.org")
    monkeypatch.setenv("BIDSFLUX_S3_ACCESS_KEY_FILE", str(site_env / "bidsflux_s3_access_key"))
    monkeypatch.setenv("BIDSFLUX_S3_SECRET_KEY_FILE", str(site_env / "bidsflux_s3_secret_key"))
    args = ["deploy", "init", "--workdir", str(site_env / "work"), "--secrets-dir", str(site_env / "secrets")]
    assert main(args) == 0
    out = capsys.readouterr().out
    variables = gitlab_double.instance_variables
    assert variables["BIDSFLUX_STORAGE_TYPE"].value == "s3"
    assert variables["BIDSFLUX_S3_ENDPOINT_URL"].value == "https://s3.example.org"
    assert variables["BIDSFLUX_S3_PATH_STYLE"].value == "true"
    for key, value in (("BIDSFLUX_S3_ACCESS_KEY", access), ("BIDSFLUX_S3_SECRET_KEY", secret)):
        assert variables[key].value == value and variables[key].masked and variables[key].protected
    assert access not in out and secret not in out
    assert "created  instance variable BIDSFLUX_S3_SECRET_KEY" in out

    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("nothing changed")
