"""DataLad calls, shared by the stages that build and change datasets.

Every call returns results as a list and turns a failure into the calling
stage's error type (``error=``), naming the study.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ._proc import git, run
from .errors import BidsfluxError, IndexingError

log = logging.getLogger(__name__)

SESSION_GITATTRIBUTES = """\
* annex.backend=SHA256E
* annex.largefiles=nothing
*.tar annex.largefiles=anything
*.tar.gz annex.largefiles=anything
**/.git* annex.largefiles=nothing
"""


def _api() -> Any:
    import datalad.api as dl  # imported late: it is slow to import

    return dl


def _call(func: Any, study: str | None, *, error: type[BidsfluxError] = IndexingError,
          **kwargs: Any) -> list[dict[str, Any]]:
    from datalad.support.exceptions import IncompleteResultsError

    try:
        return list(func(result_renderer="disabled", return_type="list", on_failure="stop", **kwargs))
    except IncompleteResultsError as exc:
        failed = [r for r in exc.failed or [] if isinstance(r, dict)]
        detail = "; ".join(_message(r) for r in failed) or str(exc)
        raise error(f"datalad {_name(func)} failed: {detail[:500]}", study=study) from exc


def _name(func: Any) -> str:
    return str(getattr(func, "_name_", None) or type(func).__name__).lower()


def _message(result: dict[str, Any]) -> str:
    message = result.get("message") or result.get("status")
    if isinstance(message, tuple):  # DataLad's (format, *args)
        try:
            return str(message[0]) % tuple(message[1:])
        except (TypeError, ValueError):
            return " ".join(map(str, message))
    return str(message)


def ensure_dataset(path: Path, *, description: str, gitattributes: str, study: str | None,
                   annex: bool = True) -> bool:
    """Create a DataLad dataset at ``path`` unless one is there; True when created."""
    if (path / ".datalad" / "config").exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    dl = _api()
    options: dict[str, Any] = {"description": description} if annex else {}
    _call(dl.create, study, path=str(path), annex=annex, force=path.exists(), **options)
    # One branch name everywhere, whatever the machine's init.defaultBranch.
    git("branch", "-M", "main", cwd=path, error=IndexingError, study=study)
    if annex:
        # Staged, not committed: the caller's first commit carries the rules (one commit less).
        (path / ".gitattributes").write_text(gitattributes)
        git("add", ".gitattributes", cwd=path, error=IndexingError, study=study)
    return True


def save(path: Path, message: str, *, study: str | None, paths: list[str] | None = None,
         error: type[BidsfluxError] = IndexingError) -> None:
    dl = _api()
    kwargs: dict[str, Any] = {"dataset": str(path), "message": message}
    if paths is not None:
        kwargs["path"] = [str(path / p) for p in paths]
    _call(dl.save, study, error=error, **kwargs)


def get(path: Path, files: list[str], *, study: str | None, no_data: bool = False,
        error: type[BidsfluxError] = IndexingError) -> None:
    dl = _api()
    _call(dl.get, study, error=error, dataset=str(path), path=[str(path / f) for f in files], get_data=not no_data)


def clone(source: str, path: Path, *, study: str | None, error: type[BidsfluxError] = IndexingError) -> None:
    dl = _api()
    _call(dl.clone, study, error=error, source=source, path=str(path))


def push(path: Path, to: str, *, study: str | None, error: type[BidsfluxError] = IndexingError,
         force: bool = False) -> None:
    """Push the current branch and git-annex to ``to``; no data.

    ``force`` replaces the remote branch (a re-run conversion branch).
    """
    dl = _api()
    _call(dl.push, study, error=error, dataset=str(path), to=to, data="nothing",
          force="gitpush" if force else None)


def lookup_keys(path: Path, files: list[str], *, study: str | None) -> dict[str, str]:
    """The annex key of each file, as git-annex has it."""
    if not files:
        return {}
    out = run(["git", "annex", "find", "--anything", "--format=${file}\t${key}\n", "--", *files],
              cwd=path, error=IndexingError, study=study).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def head(path: Path, *, study: str | None) -> str:
    return git("rev-parse", "HEAD", cwd=path, error=IndexingError, study=study)


def dataset_id(path: Path, *, study: str | None) -> str:
    return git("config", "-f", ".datalad/config", "datalad.dataset.id", cwd=path,
               error=IndexingError, study=study)


def drop_pointer(path: Path) -> None:
    """Remove an annexed file's pointer so a new archive can take its place."""
    if path.is_symlink() or path.exists():
        path.unlink()


def annex_setkey(path: Path, key: str, source: Path, *, study: str | None) -> None:
    """Move ``source`` into the annex as the content of ``key``.

    The caller computed ``key`` from the very bytes it wrote, so git-annex is
    told not to hash them again (``annex.verify=false``): an archive is read
    once, not twice.
    """
    run(["git", "-c", "annex.verify=false", "annex", "setkey", key, source], cwd=path,
        error=IndexingError, study=study)


def annex_link(path: Path, items: list[tuple[str, str]], *, study: str | None) -> None:
    """Stage each ``(key, name)`` as an annexed file, in one batched ``fromkey``."""
    if not items:
        return
    for _, name in items:
        drop_pointer(path / name)
    lines = "".join(f"{key} {name}\n" for key, name in items)
    run(["git", "annex", "fromkey", "--force", "--batch"], cwd=path, error=IndexingError, study=study,
        input=lines.encode())


def commit_staged(path: Path, message: str, files: list[str], *, study: str | None) -> None:
    """Stage ``files`` (small, in git) and commit with everything already staged."""
    git("add", "--", *files, cwd=path, error=IndexingError, study=study)
    git("commit", "--quiet", "-m", message, cwd=path, error=IndexingError, study=study)


def recover_worktree(path: Path) -> None:
    """Clear what a killed writer left behind; only call while holding the dataset lock."""
    lock = path / ".git" / "index.lock"
    if lock.exists():
        lock.unlink()
    for partial in path.glob(".*.partial"):
        partial.unlink()


def create_ria_storage(path: Path, name: str, url: str, *, study: str | None,
                       error: type[BidsfluxError] = IndexingError) -> None:
    """Add a RIA store on this machine as the dataset's storage special remote (ORA).

    Its URL is recorded in the git-annex branch with ``autoenable=true``, so a
    clone made from the forge can ``datalad get`` from it with no set-up.
    """
    dl = _api()
    _call(dl.create_sibling_ria, study, error=error, dataset=str(path), url=url,
          name=name, storage_sibling="only", new_store_ok=True)


def is_dirty(path: Path, *, study: str | None) -> bool:
    """Anything staged, modified or untracked (a killed writer's leftovers)."""
    return bool(git("status", "--porcelain", cwd=path, error=IndexingError, study=study))
