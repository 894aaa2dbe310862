"""The embedded forge: real git over smart HTTP, pushes only with the token."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bidsflux.errors import ForgeError
from bidsflux.forge import ForgeServer, LocalForge
from bidsflux.settings import Settings

TOKEN = "forge-token-for-tests-0123456789"


@pytest.fixture
def forge(tmp_path: Path):
    settings = Settings().replace(workdir=tmp_path / "work", forge_token=TOKEN)
    server = ForgeServer(settings.forge_dir, TOKEN, "127.0.0.1", 0).start()
    yield LocalForge(settings, server.base_url)
    server.stop()


def _repo(path: Path) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    (path / "README").write_text("hello\n")
    subprocess.run(["git", "add", "README"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "first"], cwd=path, check=True)
    return path


def test_push_with_token_then_anonymous_clone(forge: LocalForge, tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    project = forge.ensure_project("grp/sub/project")
    forge.push(repo, project, ["main"])
    assert project.url == f"{forge.base_url}/grp/sub/project.git"
    # The token is never written into the repository's configuration.
    assert TOKEN not in (repo / ".git" / "config").read_text()

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", project.url, str(clone)], check=True, env={"PATH": "/usr/bin:/bin",
                   "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0"})
    assert (clone / "README").read_text() == "hello\n"


def test_push_with_a_wrong_token_is_refused_without_leaking_it(tmp_path: Path, forge: LocalForge) -> None:
    repo = _repo(tmp_path / "repo")
    project = forge.ensure_project("grp/other")
    wrong = LocalForge(forge.settings.replace(forge_token="not-the-right-token-xyz"), forge.base_url)
    with pytest.raises(ForgeError) as caught:
        wrong.push(repo, project, ["main"])
    assert "not-the-right-token-xyz" not in str(caught.value)
    assert subprocess.run(["git", "ls-remote", project.url], capture_output=True, text=True,
                          check=True).stdout == ""


def test_ensure_project_is_idempotent_and_stays_inside(forge: LocalForge) -> None:
    first = forge.ensure_project("a/b")
    assert forge.ensure_project("a/b") == first
    with pytest.raises(ForgeError):
        forge.ensure_project("../outside")


def test_paths_outside_the_forge_are_not_served(forge: LocalForge) -> None:
    for path in ("/../../etc/passwd", "/a/%2e%2e/%2e%2e/etc/passwd", "/nothing-here"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(forge.base_url + path, timeout=10)
        assert caught.value.code == 404
