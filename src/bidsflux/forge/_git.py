"""The git side of publishing, shared by both forges: remotes, ls-remote, push, template history.

Credentials reach git only through the environment (a credential helper that
echoes ``$BIDSFLUX_FORGE_TOKEN``, or ``GIT_SSH_COMMAND`` with a key file), so
no token is ever in a URL, in ``.git/config`` or in an error message.  A push
failure is transient when the forge could not be reached or answered 5xx/429:
the worker then retries later with the study still in STORED.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._proc import git, mask_secrets, run, tool_env
from ..errors import ForgeError

# Commits of the project templates that `bidsflux deploy init` pushes carry this
# committer; a project created from a template starts with such commits only,
# and only those are merged into a dataset before its first push.
TEMPLATE_COMMITTER_NAME = "bids-flux templates"
TEMPLATE_COMMITTER_EMAIL = "templates@bids-flux.invalid"

_TRANSIENT = re.compile(
    r"Could not resolve host|Failed to connect|Connection refused|Connection reset|timed out|"
    r"returned error: (?:5\d\d|429|408)|RPC failed|early EOF|Empty reply from server|"
    r"ssh: connect to host|Connection closed by remote host",
    re.IGNORECASE,
)


def git_transient(text: str) -> bool:
    """True when git's complaint means "the forge was unreachable or failing", worth retrying."""
    return bool(_TRANSIENT.search(text))


def _failure(action: str, proc_text: str, env: Mapping[str, str], study: str | None) -> ForgeError:
    tail = mask_secrets(proc_text.strip(), tool_env(env))[-600:]
    transient = git_transient(tail)
    return ForgeError(f"{action} failed: {tail}", study=study, transient=transient,
                      hint="retried later" if transient else None)


def ensure_remote(dataset: Path, remote: str, url: str, *, study: str | None) -> None:
    """Point ``remote`` of ``dataset`` at ``url`` (a URL without credentials)."""
    current = run(["git", "remote", "get-url", remote], cwd=dataset, check=False).stdout.strip()
    if not current:
        git("remote", "add", remote, url, cwd=dataset, error=ForgeError, study=study)
        # The forge holds git only; annexed content lives in the store.
        git("config", f"remote.{remote}.annex-ignore", "true", cwd=dataset, error=ForgeError, study=study)
    elif current != url:
        git("remote", "set-url", remote, url, cwd=dataset, error=ForgeError, study=study)


def ls_remote(url_or_remote: str, env: Mapping[str, str], *, cwd: Path | None = None,
              study: str | None = None) -> dict[str, str]:
    """Branch name -> commit of a remote repository (empty for an empty one)."""
    proc = run(["git", "ls-remote", "--heads", url_or_remote], cwd=cwd, env=env, check=False)
    if proc.returncode != 0:
        raise _failure(f"reading the branches of {url_or_remote}", proc.stderr or proc.stdout, env, study)
    return branch_heads(proc.stdout)


def branch_heads(ls_remote_output: str) -> dict[str, str]:
    """Branch name -> commit, from the output of ``git ls-remote``."""
    heads = {}
    for line in ls_remote_output.splitlines():
        sha, _, ref = line.partition("\t")
        if ref.startswith("refs/heads/"):
            heads[ref[len("refs/heads/"):]] = sha
    return heads


def push_refs(dataset: Path, remote: str, refs: Sequence[str], env: Mapping[str, str], *,
              study: str | None, what: str) -> None:
    specs = [f"refs/heads/{ref}:refs/heads/{ref}" for ref in refs]
    proc = run(["git", "push", "--quiet", remote, *specs], cwd=dataset, env=env, check=False)
    if proc.returncode != 0:
        raise _failure(f"pushing {', '.join(refs)} to {what}", proc.stderr or proc.stdout, env, study)


def _is_ancestor(dataset: Path, older: str, newer: str) -> bool:
    return run(["git", "merge-base", "--is-ancestor", older, newer], cwd=dataset, check=False).returncode == 0


def _has_commit(dataset: Path, sha: str) -> bool:
    return run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=dataset, check=False).returncode == 0


def adopt_template_history(dataset: Path, remote: str, branch: str, remote_sha: str | None,
                           env: Mapping[str, str], *, study: str | None, what: str) -> bool:
    """Merge a new project's template commits into ``branch`` so the push fast-forwards.

    A project created from a template already has the template's commits.  They
    are merged (the dataset's own files win any clash) only when every commit
    the dataset lacks is a template commit; anything else on the forge is
    someone's work, and the push is refused rather than overwriting it.
    Returns True when a merge was made.
    """
    local = f"refs/heads/{branch}"
    if remote_sha is None or (_has_commit(dataset, remote_sha) and _is_ancestor(dataset, remote_sha, local)):
        return False
    fetched = f"refs/bidsflux/forge/{branch}"
    proc = run(["git", "fetch", "--quiet", remote, f"+refs/heads/{branch}:{fetched}"], cwd=dataset, env=env,
               check=False)
    if proc.returncode != 0:
        raise _failure(f"fetching {branch} from {what}", proc.stderr or proc.stdout, env, study)
    committers = git("log", "--format=%ce", f"{local}..{fetched}", cwd=dataset, error=ForgeError,
                     study=study).split()
    if not committers or any(email != TEMPLATE_COMMITTER_EMAIL for email in committers):
        raise ForgeError(f"{what} has commits on {branch} that this dataset lacks; not overwriting them",
                         study=study, hint="merge them by hand, then publish again")
    message = f"[bids-flux] Adopt the project template's {branch}"
    current = run(["git", "symbolic-ref", "--quiet", "--short", "HEAD"], cwd=dataset, check=False).stdout.strip()
    if current == branch:
        git("merge", "--quiet", "--allow-unrelated-histories", "--no-edit", "-X", "ours", "-m", message, fetched,
            cwd=dataset, error=ForgeError, study=study)
    else:
        tree = git("merge-tree", "--write-tree", "--allow-unrelated-histories", local, fetched, cwd=dataset,
                   error=ForgeError, study=study).splitlines()[0]
        commit = git("commit-tree", tree, "-p", local, "-p", fetched, "-m", message, cwd=dataset,
                     error=ForgeError, study=study)
        git("update-ref", local, commit, cwd=dataset, error=ForgeError, study=study)
    git("update-ref", "-d", fetched, cwd=dataset, error=ForgeError, study=study)
    return True
