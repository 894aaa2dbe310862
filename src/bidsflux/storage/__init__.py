"""Stage 4, store: push annexed content to the store, then verify it is there.

The embedded default is a DataLad RIA store on this machine, reached through
git-annex's ORA special remote (``autoenable=true``, so clones made from the
forge can ``datalad get`` from it with no set-up).  Nothing is called stored until every key has been
seen in the store with its right size: git-annex's word is not enough.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .. import _datalad
from .._proc import git, run
from ..errors import StorageError
from ..settings import Settings

log = logging.getLogger(__name__)

_KEY_SIZE = re.compile(r"^[A-Z0-9]+-s(\d+)-")


@dataclass(frozen=True)
class StoreResult:
    keys: int
    bytes: int


def ensure_remote(settings: Settings, dataset: Path, *, study: str | None) -> None:
    """Configure the store as a special remote of ``dataset`` if it is not yet."""
    name = settings.storage_remote
    configured = run(["git", "config", f"remote.{name}.annex-uuid"], cwd=dataset, check=False).stdout.strip()
    if configured:
        return
    settings.store_dir.mkdir(parents=True, exist_ok=True)
    _datalad.create_ria_storage(dataset, name, store_url(settings), study=study, error=StorageError)


def store_url(settings: Settings) -> str:
    return f"ria+file://{settings.store_dir}"


def confirm_remote(settings: Settings, dataset: Path, *, study: str | None) -> None:
    """Pass git-annex's verified-remote gate in a clone, after checking where the remote points.

    git-annex blocks writes from a clone to a special remote it learnt of from
    the git-annex branch until someone confirms the location; a CI job does
    that here, and only when the location is the configured store.
    """
    name = settings.storage_remote
    out = run(["git", "annex", "verifyremote", name], cwd=dataset, error=StorageError, study=study).stdout
    match = re.search(rf"verifyremote {re.escape(name)} --safe (\S+)", out)
    if match is None:
        return  # already verified (the repository that created it, or an earlier job)
    expected = store_url(settings)
    if f"url={expected} " not in out + " ":
        raise StorageError(f"storage remote {name} does not point at the configured store {expected}",
                           study=study, hint="check BIDSFLUX_STORAGE_LOCAL_PATH against the dataset's remote")
    run(["git", "annex", "verifyremote", name, "--safe", match.group(1)], cwd=dataset, error=StorageError,
        study=study)


def _annexed_keys(dataset: Path, *, study: str | None) -> list[str]:
    out = run(["git", "annex", "find", "--include=*", "--format=${key}\n"], cwd=dataset,
              error=StorageError, study=study).stdout
    return sorted(set(out.split()))


def _store_path(settings: Settings, dataset: Path, key: str, *, study: str | None) -> Path:
    """Where the RIA store keeps ``key``: <store>/<id[:3]>/<id[3:]>/annex/objects/<hashdirmixed>/<key>/<key>."""
    hashdir = run(["git", "annex", "examinekey", "--format=${hashdirmixed}", key], cwd=dataset,
                  error=StorageError, study=study).stdout.strip()
    ds_id = git("config", "-f", ".datalad/config", "datalad.dataset.id", cwd=dataset, error=StorageError,
                study=study)
    return settings.store_dir / ds_id[:3] / ds_id[3:] / "annex" / "objects" / hashdir / key / key


def push(settings: Settings, dataset: Path, *, study: str | None, jobs: int = 4) -> StoreResult:
    """Copy every annexed file present here to the store, then verify each key there."""
    ensure_remote(settings, dataset, study=study)
    confirm_remote(settings, dataset, study=study)
    run(["git", "annex", "copy", "--to", settings.storage_remote, f"-J{jobs}", "--fast", "--quiet"],
        cwd=dataset, error=StorageError, study=study)
    return verify(settings, dataset, study=study)


def verify(settings: Settings, dataset: Path, *, study: str | None) -> StoreResult:
    """Every annexed key of the dataset must be in the store with its size."""
    keys = _annexed_keys(dataset, study=study)
    total = 0
    missing = []
    for key in keys:
        match = _KEY_SIZE.match(key)
        if not match:
            raise StorageError(f"annex key without size: {key}", study=study)
        size = int(match.group(1))
        path = _store_path(settings, dataset, key, study=study)
        if not path.is_file() or path.stat().st_size != size:
            missing.append(key)
        total += size
    if missing:
        raise StorageError(f"{len(missing)} of {len(keys)} archives are missing or short in the store "
                           f"(first: {missing[0]})", study=study, hint="`bidsflux retry` sends them again")
    return StoreResult(len(keys), total)


def remote_uuid(settings: Settings, dataset: Path) -> str:
    return git("config", f"remote.{settings.storage_remote}.annex-uuid", cwd=dataset, error=StorageError)
