"""Stage 5, publish: the forge that holds every dataset's git history.

The embedded default (``BIDSFLUX_FORGE_TYPE=local``) is a folder of bare
repositories served over smart HTTP by ``git http-backend``.  Projects follow
the GitLab layout of ARCHITECTURE.md (``<group>/sourcedata/dicoms/<session>``,
``<group>/sourcedata/dicoms/study``, ``<group>/bids``).  Pushes authenticate
with the forge token through a credential helper that reads it from the
environment, so the token is never in a URL or in ``.git/config``.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._proc import git, run
from ..errors import ForgeError
from ..settings import Settings
from ._http import ForgeServer

log = logging.getLogger(__name__)

# git runs this helper; it only echoes the token from the environment, so no
# value from a DICOM tag or a URL is ever part of it.
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get && echo username=bids-flux && echo "password=$BIDSFLUX_FORGE_TOKEN"; }; f'
)


def forge_token(settings: Settings) -> str:
    """The push token: from settings/secrets, else generated once into the work dir."""
    if settings.forge_token:
        return settings.forge_token
    path = settings.workdir / "secrets" / "forge_token"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def credential_env(token: str) -> dict[str, str]:
    """Environment that lets git push to the forge without storing the token."""
    return {
        "BIDSFLUX_FORGE_TOKEN": token,
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "",
        "GIT_CONFIG_KEY_1": "credential.helper",
        "GIT_CONFIG_VALUE_1": _CREDENTIAL_HELPER,
    }


@dataclass(frozen=True)
class Project:
    path: str
    url: str


class LocalForge:
    """Bare repositories under ``<workdir>/forge``, reachable at ``base_url``."""

    def __init__(self, settings: Settings, base_url: str):
        self.settings = settings
        self.root = settings.forge_dir
        self.base_url = base_url.rstrip("/")
        self.token = forge_token(settings)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}.git"

    def ensure_project(self, path: str, *, default_branch: str = "main", study: str | None = None) -> Project:
        """Create the bare repository for ``path`` if missing (idempotent)."""
        repo = (self.root / f"{path}.git").resolve()
        if not repo.is_relative_to(self.root.resolve()):
            raise ForgeError(f"project path {path!r} leaves the forge", study=study)
        if not (repo / "HEAD").exists():
            repo.mkdir(parents=True, exist_ok=True)
            git("init", "--quiet", "--bare", f"--initial-branch={default_branch}", ".", cwd=repo,
                error=ForgeError, study=study)
            git("config", "http.receivepack", "true", cwd=repo, error=ForgeError, study=study)
            log.info("created forge project %s", path, extra={"study_uid": study})
        return Project(path, self.url(path))

    def set_default_branch(self, path: str, branch: str, *, study: str | None = None) -> None:
        git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=self.root / f"{path}.git",
            error=ForgeError, study=study)

    def push(self, dataset: Path, project: Project, refs: Sequence[str], *, study: str | None = None,
             remote: str = "forge") -> None:
        """Push ``refs`` of ``dataset`` to ``project`` under the remote name ``remote``."""
        current = run(["git", "remote", "get-url", remote], cwd=dataset, check=False).stdout.strip()
        if not current:
            git("remote", "add", remote, project.url, cwd=dataset, error=ForgeError, study=study)
            # The forge holds git only; annexed content lives in the store.
            git("config", f"remote.{remote}.annex-ignore", "true", cwd=dataset, error=ForgeError, study=study)
        elif current != project.url:
            git("remote", "set-url", remote, project.url, cwd=dataset, error=ForgeError, study=study)
        specs = [f"refs/heads/{ref}:refs/heads/{ref}" for ref in refs]
        run(["git", "push", "--quiet", remote, *specs], cwd=dataset, error=ForgeError, study=study,
            env=credential_env(self.token))


__all__ = ["ForgeServer", "LocalForge", "Project", "credential_env", "forge_token"]
