"""Registering sessions in a study superdataset at constant cost.

A session is added by appending its ``.gitmodules`` section and writing the
gitlink with git plumbing (``hash-object``, ``update-index``, ``write-tree``,
``commit-tree``, ``update-ref``).  Nothing walks the other subdatasets or the
work tree, so registering session #10,000 costs what #1 did; DataLad's own
``save`` inspects every subdataset, which takes hours at that size.  The
result is an ordinary DataLad superdataset: ``datalad get -n <session>``
installs a session from the recorded URL.
"""

from __future__ import annotations

from pathlib import Path

from .._proc import git, run
from ..errors import BidsfluxError, IndexingError


def _section(path: str, url: str, ds_id: str) -> str:
    return f'[submodule "{path}"]\n\tpath = {path}\n\turl = {url}\n\tdatalad-id = {ds_id}\n'


def register_subdataset(superds: Path, path: str, url: str, ds_id: str, commit: str, message: str,
                        *, study: str | None, error: type[BidsfluxError] = IndexingError) -> bool:
    """Point ``superds``'s subdataset ``path`` at ``commit``; False when nothing changed.

    The caller holds the superdataset's lock (one writer at a time).
    """
    for value in (path, url, ds_id):
        if any(ch in value for ch in '"\n\r\\') or not value:
            raise error(f"unsafe subdataset field {value[:80]!r}", study=study)
    current = git("ls-files", "-s", "--", path, cwd=superds, error=error, study=study)
    if current.startswith("160000 ") and current.split()[1] == commit:
        return False
    modules = superds / ".gitmodules"
    if not current:
        with open(modules, "a", encoding="utf-8") as fh:
            fh.write(_section(path, url, ds_id))
    else:
        for key, value in (("url", url), ("datalad-id", ds_id)):
            git("config", "-f", ".gitmodules", f"submodule.{path}.{key}", value, cwd=superds, error=error,
                study=study)
    (superds / path).mkdir(parents=True, exist_ok=True)
    # Fast zlib for the two objects that grow with the study (.gitmodules, the root tree).
    blob = git("-c", "core.looseCompression=1", "hash-object", "-w", ".gitmodules", cwd=superds, error=error,
               study=study)
    # A split index: each registration writes a small delta, not the whole index again.
    run(["git", "-c", "core.splitIndex=true", "update-index", "--add", "--cacheinfo", f"100644,{blob},.gitmodules",
         "--cacheinfo", f"160000,{commit},{path}"], cwd=superds, error=error, study=study)
    tree = git("-c", "core.looseCompression=1", "write-tree", cwd=superds, error=error, study=study)
    parent = git("rev-parse", "HEAD", cwd=superds, error=error, study=study)
    new = git("commit-tree", tree, "-p", parent, "-m", message, cwd=superds, error=error, study=study)
    git("update-ref", "-m", "bids-flux: register subdataset", "HEAD", new, parent, cwd=superds, error=error,
        study=study)
    return True
