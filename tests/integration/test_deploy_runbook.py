"""docs/deploy.md replayed: every runbook command that can run without the site runs here, as written, in order.

The admin's shell is bash in a copy of the repository's deployment files,
with a HOME of its own. What the site would provide is stood in for, and
only that: the GitLab API is the GitLab double, the swarm engine is the
stand-in `docker` of tests/unit/test_deploy_secrets.py (which hands `docker
stack config` to the real client), the scanner's endpoint is dcmtk's
storescp. The steps a person does by hand between commands (editing .env,
pasting the admin token, setting CI variables for a build) are done by
`by_hand` below, each tied to the command it precedes or follows.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port
from tests.gitlab_double import GitLabDouble
from tests.unit.test_deploy_runbook import classify, runbook_commands
from tests.unit.test_deploy_secrets import HOSTS, FakeDocker, listed_secrets, make_certificate

pytest_plugins = ["tests.gitlab_double.fixture"]

ROOT = Path(__file__).resolve().parents[2]
COPIED = ["BIDSflux_stack.yml", "docker-compose-mercure.yml", ".env.example", "local-stack", "deploy", "containers",
          "ci-pipelines"]


class Admin:
    """The admin's shell: each command runs in bash after the exports and `set -a; . ./.env` run so far."""

    def __init__(self, repo: Path, home: Path, docker: FakeDocker, double: GitLabDouble):
        self.repo, self.home, self.docker, self.double = repo, home, docker, double
        self.prelude: list[str] = []
        self.extra_env: dict[str, str] = {}

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        # The site's names, swapped for what stands in for them here.
        command = command.replace('"https://$BIDSFLUX_GITLAB_HOST"', f'"{self.double.url}"')
        command = command.replace("dicom.example.org", "127.0.0.1")
        script = "\n".join(["set -euo pipefail", *self.prelude, command])
        env = self.docker.env(HOME=str(self.home), TCP_NODELAY="1", NO_ET="1", **self.extra_env)
        done = subprocess.run(["bash", "-c", script], cwd=self.repo, env=env, capture_output=True, text=True,
                              timeout=300)
        if command.startswith(("export ", "set -a")):
            self.prelude.append(command)
        return done


def edit_env(path: Path, changes: dict[str, str]) -> None:
    lines = []
    for line in path.read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={changes[name]}" if name in changes and not line.startswith("#") else line)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    process = subprocess.Popen(["/usr/bin/storescp", "--aetitle", "BIDSFLUX", "--output-directory", str(received),
                                str(port)], env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        yield port, received
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_the_runbook_runs_as_written(gitlab_double: GitLabDouble, storescp: tuple[int, Path], tmp_path: Path) -> None:
    port, received = storescp
    repo, home = tmp_path / "checkout", tmp_path / "home"
    repo.mkdir()
    home.mkdir()
    for item in COPIED:
        source = ROOT / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / item)
    docker = FakeDocker(tmp_path / "engine")
    admin = Admin(repo, home, docker, gitlab_double)
    srv = tmp_path / "srv"
    make_certificate(home / "tls", list(HOSTS.values()))

    def by_hand(command: str, when: str) -> None:
        if when == "after" and command == "cp .env.example .env":
            # "Edit .env": the site's folders (here under tmp), the DICOM port (here storescp's).
            edit_env(repo / ".env", {"BIDSFLUX_GITLAB_DIR": f"{srv}/gitlab", "BIDSFLUX_MINIO_DIR": f"{srv}/minio",
                                     "BIDSFLUX_INDEXER_DIR": f"{srv}/indexer",
                                     "BIDSFLUX_RUNNER_DIR": f"{srv}/gitlab-runner",
                                     "MERCURE_DIR": f"{srv}/mercure", "STORESCP_PORT": str(port),
                                     "BIDSFLUX_GITLAB_RETRIES": "1"})
        if when == "after" and command.startswith("install -m 0600 /dev/null ~/gitlab_admin_token"):
            (home / "gitlab_admin_token").write_text(gitlab_double.admin_token + "\n")
        if when == "before" and command.startswith("sh containers/build.sh"):
            # "with CI_REGISTRY_IMAGE and CI_COMMIT_TAG set as in containers/README.md"
            admin.extra_env = {"CI_REGISTRY_IMAGE": "registry.example.org/bids-flux/bids-flux",
                               "CI_COMMIT_TAG": "v0.1.0"}
        if when == "after" and command.startswith("sh containers/build.sh"):
            admin.extra_env = {}

    ran = []
    for command in runbook_commands():
        kind, rule = classify(command)
        if kind != "here":
            continue
        if "--rotate" in command or "--check" in command:
            continue  # run below, once the state they act on exists
        by_hand(command, "before")
        done = admin.run(command)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        by_hand(command, "after")
        ran.append((rule, command, done))

    outputs = {command: done.stdout for _, command, done in ran}
    # Step 4: the folders, the indexer's owned by its user.
    indexer_dir = srv / "indexer"
    assert indexer_dir.is_dir() and indexer_dir.stat().st_uid == 10001
    assert stat.S_IMODE((srv / "gitlab-runner").stat().st_mode) == 0o700
    # Step 5 and 8: every secret, the bot token now GitLab's own, its files gone.
    secrets = docker.state()["secrets"]
    assert set(secrets) == set(listed_secrets())
    token = secrets["gitlab_dicom_bot_token"]
    assert token["value"].startswith("glpat-") and "bidsflux.placeholder" not in token["labels"]
    assert not list((home / "bidsflux-tokens").iterdir())
    init = next(out for command, out in outputs.items() if command.startswith("bidsflux deploy init"))
    assert "created  user dicom_bot" in init
    # Step 9: the data node's runner configuration in place, private.
    config = srv / "gitlab-runner" / "config.toml"
    assert "[[runners]]" in config.read_text() and stat.S_IMODE(config.stat().st_mode) == 0o600
    processing = tomllib.loads((home / "bidsflux-runners" / "processing" / "config.toml").read_text())
    networks = {r["name"]: r["docker"].get("network_mode") for r in processing["runners"]}
    assert networks == {"processing-bids": "bidsflux", "processing-gpu": "bidsflux"}, "jobs reach GitLab and S3"
    # Step 10: the image build, as CI runs it.
    builds = [call for call in docker.state()["calls"] if call[:1] == ["build"]]
    assert builds and "registry.example.org/bids-flux/bids-flux/indexer:0.1.0" in builds[0]
    # Step 11: the study reached the DICOM endpoint.
    sent = next(out for command, out in outputs.items() if command.startswith("bidsflux send-test-study"))
    assert "0 failed" in sent
    assert len([p for p in received.rglob("*") if p.is_file()]) > 100
    # mercure: its configuration, with the module.
    assert '"bids-flux"' in (srv / "mercure" / "config" / "mercure.json").read_text()

    check = admin.run("deploy/generate_secrets.sh --check")
    assert check.returncode == 0, check.stdout
    rotate = next(c for c in runbook_commands() if "--rotate" in c)
    old = secrets["minio_root_password"]["value"]
    done = admin.run(rotate)
    assert done.returncode == 0, done.stderr
    assert docker.state()["secrets"]["minio_root_password"]["value"] != old
    covered = {rule for rule, _, _ in ran} | {"generate_secrets.sh"}
    from tests.unit.test_deploy_runbook import HERE

    assert covered == set(HERE), "every command the runbook runs here was run"
