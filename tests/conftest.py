"""Shared test set-up: tool paths, an isolated HOME, tiers by folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

VENV_BIN = str(Path(sys.executable).parent)
TIERS = {"unit", "integration", "e2e"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The folder decides the tier, so `-m unit` works without decorating every test.
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS and not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tools from the venv first; a HOME of our own so no user git config leaks in."""
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)
    os.environ["PATH"] = os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")])
    os.environ["HOME"] = str(home)
    os.environ["NO_ET"] = "1"
    os.environ["DATALAD_LOG_LEVEL"] = "WARNING"
    os.environ["DATALAD_UI_PROGRESSBAR"] = "none"
    for name in ("BIDSFLUX_WORKDIR", "BIDSFLUX_FORGE_TOKEN", "STORESCP_PORT", "BIDSFLUX_FORGE_PORT"):
        os.environ.pop(name, None)
    subprocess.run(["git", "config", "--global", "user.name", "bids-flux tests"], check=True)
    subprocess.run(["git", "config", "--global", "user.email", "tests@bids-flux.invalid"], check=True)
    subprocess.run(["git", "config", "--global", "init.defaultBranch", "main"], check=True)
    yield
    os.environ.clear()
    os.environ.update(saved)


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    """Readiness check: the port accepts connections (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def researcher_env(home: Path) -> dict[str, str]:
    """What a researcher's fresh shell has: tools on PATH, an empty HOME, a git identity."""
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.pathsep.join([VENV_BIN, "/usr/bin", "/bin"]), "HOME": str(home), "NO_ET": "1",
           "LANG": "C.UTF-8"}
    for key, value in (("user.name", "Researcher"), ("user.email", "researcher@example.org")):
        subprocess.run(["git", "config", "--global", key, value], env=env, check=True)
    return env
