"""The ``local`` store: a DataLad RIA store on this machine (the embedded default).

Reached through git-annex's ORA special remote, recorded with
``autoenable=true`` so that clones made from the forge can ``datalad get``
from it with no set-up.  Verification looks each key up in the store's own
tree (``<store>/<id[:3]>/<id[3:]>/annex/objects/<hashdirmixed>/<key>/<key>``)
and compares its size with the key's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import _datalad
from .._proc import git, run
from ..errors import StorageError
from ..settings import Settings
from . import _annex


class LocalStore:
    def __init__(self, settings: Settings, *, study: str | None):
        self.settings = settings
        self.study = study
        self.name = settings.storage_remote

    @property
    def url(self) -> str:
        return f"ria+file://{self.settings.store_dir}"

    def plan(self, dataset: Path, tags: Mapping[str, Any], pattern: str | None = None) -> None:
        """Nothing to decide: every dataset goes to the one store."""

    def ensure(self, dataset: Path, *, tags: Mapping[str, Any] | None = None, like: Path | None = None) -> None:
        if _annex.enabled_uuid(dataset, self.name):
            return
        self.settings.store_dir.mkdir(parents=True, exist_ok=True)
        _datalad.create_ria_storage(dataset, self.name, self.url, study=self.study, error=StorageError)

    def confirm(self, dataset: Path) -> None:
        """Pass git-annex's verified-remote gate in a clone, after checking where the remote points."""
        out = run(["git", "annex", "verifyremote", self.name], cwd=dataset, error=StorageError,
                  study=self.study).stdout
        match = re.search(rf"verifyremote {re.escape(self.name)} --safe (\S+)", out)
        if match is None:
            return  # already verified (the repository that created it, or an earlier job)
        if f"url={self.url} " not in out + " ":
            raise StorageError(f"storage remote {self.name} does not point at the configured store {self.url}",
                               study=self.study,
                               hint="check BIDSFLUX_STORAGE_LOCAL_PATH against the dataset's remote")
        run(["git", "annex", "verifyremote", self.name, "--safe", match.group(1)], cwd=dataset,
            error=StorageError, study=self.study)

    def copy(self, dataset: Path, jobs: int) -> str | None:
        proc = run(["git", "annex", "copy", "--to", self.name, f"-J{jobs}", "--fast", "--quiet"],
                   cwd=dataset, check=False)
        return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()[-600:]

    def _paths(self, dataset: Path, keys: list[str]) -> dict[str, Path]:
        dirs = _annex.hash_dirs(dataset, keys, fmt="hashdirmixed", study=self.study)
        ds_id = git("config", "-f", ".datalad/config", "datalad.dataset.id", cwd=dataset, error=StorageError,
                    study=self.study)
        base = self.settings.store_dir / ds_id[:3] / ds_id[3:] / "annex" / "objects"
        return {key: base / dirs[key] / key / key for key in keys}

    def check(self, dataset: Path, keys: list[str]) -> dict[str, str]:
        """Keys not in the store with their full size, and what is wrong with each."""
        problems = {}
        for key, path in self._paths(dataset, keys).items():
            size = _annex.key_size(key, study=self.study)
            if not path.is_file():
                problems[key] = "missing"
            elif path.stat().st_size != size:
                problems[key] = f"short ({path.stat().st_size} of {size} bytes)"
        return problems

    def discard(self, dataset: Path, problems: Mapping[str, str]) -> None:
        """Remove short copies and tell git-annex the store lacks them, so they are sent again."""
        for key, path in self._paths(dataset, list(problems)).items():
            if path.is_file():
                os.chmod(path.parent, 0o755)  # git-annex leaves object folders read-only
                path.unlink()
        uuid = _annex.enabled_uuid(dataset, self.name)
        _annex.mark_absent(dataset, list(problems), uuid, study=self.study)

    def failure(self, dataset: Path, message: str, copy_error: str | None) -> StorageError:
        detail = f"; git-annex said: {copy_error[-300:]}" if copy_error else ""
        return StorageError(f"{message} in {self.url}{detail}", study=self.study, hint="check the store's disk; "
                            "`bidsflux retry` sends them again")
