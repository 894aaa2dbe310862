"""Stage 5, publish: the forge that holds every dataset's git history.

Two kinds, chosen by ``BIDSFLUX_FORGE_TYPE`` through :func:`make_forge`:

- ``local`` (the embedded default): a folder of bare repositories served over
  smart HTTP by ``git http-backend`` (:class:`LocalForge`, :class:`ForgeServer`);
- ``gitlab``: groups and projects on a GitLab instance (``forge.gitlab``).

Projects follow the GitLab layout of ARCHITECTURE.md
(``<group>/sourcedata/dicoms/<session>``, ``<group>/sourcedata/dicoms/study``,
``<group>/bids``, ``<group>/derivatives/<name>``, ``<group>/qc/<name>``).
Pushes authenticate through a credential helper that reads the token from the
environment, so the token is never in a URL or in ``.git/config``.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .._proc import git
from ..errors import ForgeError
from ..settings import Settings
from ._git import ensure_remote, ls_remote, push_refs
from ._http import ForgeServer

log = logging.getLogger(__name__)

# git runs this helper; it only echoes the token from the environment, so no
# value from a DICOM tag or a URL is ever part of it.
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get && echo "username=${BIDSFLUX_FORGE_USER:-bids-flux}" && '
    'echo "password=$BIDSFLUX_FORGE_TOKEN"; }; f'
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


def credential_env(token: str, username: str = "bids-flux") -> dict[str, str]:
    """Environment that lets git push to the forge without storing the token."""
    return {
        "BIDSFLUX_FORGE_TOKEN": token,
        "BIDSFLUX_FORGE_USER": username,
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "",
        "GIT_CONFIG_KEY_1": "credential.helper",
        "GIT_CONFIG_VALUE_1": _CREDENTIAL_HELPER,
    }


@dataclass(frozen=True)
class Project:
    """A forge project: ``url`` is what researchers clone; ``push_url`` where pushes go, if not there."""

    path: str
    url: str
    push_url: str = ""


class Forge(Protocol):
    """What publishing needs from a forge, whichever its kind."""

    kind: str
    token: str

    def url(self, path: str) -> str: ...

    def ensure_project(self, path: str, *, default_branch: str = "main", study: str | None = None) -> Project: ...

    def set_default_branch(self, path: str, branch: str, *, study: str | None = None) -> None: ...

    def push(self, dataset: Path, project: Project, refs: Sequence[str], *, study: str | None = None,
             remote: str = "forge") -> None: ...

    def remote_branches(self, project: Project, *, study: str | None = None) -> dict[str, str]: ...


def make_forge(settings: Settings, local_base_url: str | None = None) -> Forge:
    """The forge that ``BIDSFLUX_FORGE_TYPE`` names.

    ``local_base_url`` is the embedded forge server's address (``ForgeServer.base_url``);
    a GitLab forge takes its address from ``CI_SERVER_URL``.
    """
    if settings.forge_type == "gitlab":
        from .gitlab import GitLabForge  # python-gitlab is imported only where GitLab is used

        return GitLabForge(settings)
    if local_base_url is None:
        raise ForgeError("the local forge needs the address of its server", hint="start a ForgeServer first")
    return LocalForge(settings, local_base_url)


class LocalForge:
    """Bare repositories under ``<workdir>/forge``, reachable at ``base_url``."""

    kind = "local"

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
        ensure_remote(dataset, remote, project.url, study=study)
        push_refs(dataset, remote, refs, credential_env(self.token), study=study, what=project.path)

    def remote_branches(self, project: Project, *, study: str | None = None) -> dict[str, str]:
        return ls_remote(project.url, credential_env(self.token), study=study)


__all__ = ["Forge", "ForgeServer", "LocalForge", "Project", "credential_env", "forge_token", "make_forge"]
