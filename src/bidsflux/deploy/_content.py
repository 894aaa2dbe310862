"""Publishing a folder of this repository (CI templates, project templates) to a GitLab project.

The folder becomes one commit whose tree is the folder's files, made with a
fixed identity and date so that the same files always give the same commit.
A branch whose tree already matches is left alone; otherwise the new commit
goes on top of it (never a force push).  The template committer is what lets
the forge merge a new project's template commits into a dataset.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._proc import git, mask_secrets, run, tool_env
from ..errors import ForgeError
from ..forge._git import TEMPLATE_COMMITTER_EMAIL, TEMPLATE_COMMITTER_NAME, ls_remote

_FIXED_DATE = "2024-01-01T00:00:00+0000"


def _identity() -> dict[str, str]:
    return {"GIT_AUTHOR_NAME": TEMPLATE_COMMITTER_NAME, "GIT_AUTHOR_EMAIL": TEMPLATE_COMMITTER_EMAIL,
            "GIT_COMMITTER_NAME": TEMPLATE_COMMITTER_NAME, "GIT_COMMITTER_EMAIL": TEMPLATE_COMMITTER_EMAIL,
            "GIT_AUTHOR_DATE": _FIXED_DATE, "GIT_COMMITTER_DATE": _FIXED_DATE}


def publish_folder(folder: Path, url: str, branches: Sequence[str], env: Mapping[str, str], *,
                   message: str) -> str:
    """Make ``branches`` of the repository at ``url`` hold ``folder``'s files; "created", "changed" or "unchanged"."""
    if not folder.is_dir() or not any(p.is_file() for p in folder.rglob("*")):
        raise ForgeError(f"{folder} has no files to publish", hint="run from the repository's root folder")
    env = {**env, **_identity()}
    with tempfile.TemporaryDirectory(prefix="bidsflux-publish-") as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(folder, repo, ignore=shutil.ignore_patterns(".git", "__pycache__"))
        git("init", "--quiet", cwd=repo, error=ForgeError)
        git("add", "--all", "--force", ".", cwd=repo, error=ForgeError)
        tree = git("write-tree", cwd=repo, error=ForgeError)
        heads = ls_remote(url, env)
        to_push: list[str] = []
        for branch in branches:
            remote = heads.get(branch)
            if remote is None:
                commit = git("commit-tree", tree, "-m", message, cwd=repo, error=ForgeError, env=env)
            else:
                fetched = run(["git", "fetch", "--quiet", url, f"+refs/heads/{branch}:refs/remotes/site/{branch}"],
                              cwd=repo, env=env, check=False)
                if fetched.returncode != 0:
                    raise ForgeError(f"cannot fetch {branch} of {url}: {fetched.stderr.strip()[-300:]}",
                                     transient=True)
                if git("rev-parse", f"{remote}^{{tree}}", cwd=repo, error=ForgeError) == tree:
                    continue
                commit = git("commit-tree", tree, "-p", remote, "-m", message, cwd=repo, error=ForgeError, env=env)
            git("update-ref", f"refs/heads/{branch}", commit, cwd=repo, error=ForgeError)
            to_push.append(branch)
        if not to_push:
            return "unchanged"
        pushed = run(["git", "push", "--quiet", url, *[f"refs/heads/{b}:refs/heads/{b}" for b in to_push]],
                     cwd=repo, env=env, check=False)
        if pushed.returncode != 0:
            raise ForgeError(f"pushing {folder.name} to {url} failed: "
                             f"{mask_secrets(pushed.stderr.strip(), tool_env(env))[-400:]}")
    return "created" if all(b not in heads for b in branches) else "changed"
