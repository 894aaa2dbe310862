"""The local RIA store is verified the same way: by looking at the store, never at git-annex's word.

Uses real git-annex and DataLad (no network), so it runs in the integration tier.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bidsflux import storage
from bidsflux.errors import StorageError
from bidsflux.index import index_batch
from bidsflux.scanner import StudySpec, study_uid
from bidsflux.settings import Settings

from ..batches import make_batch

pytestmark = pytest.mark.integration


def _store_objects(settings: Settings) -> list[Path]:
    return sorted(p for p in settings.store_dir.rglob("SHA256E-*") if p.is_file())


def test_local_store_detects_and_resends_missing_or_short_objects(tmp_path: Path) -> None:
    settings = Settings().replace(workdir=tmp_path / "work")
    spec = StudySpec(seed=51)
    result = index_batch(settings, study_uid(spec), make_batch(settings.spool_dir, spec, tmp_path / "d",
                                                               only_series={1, 2, 3}))
    storage.plan(settings, result.dataset, study=result.study_uid, tags=result.tags)  # nothing to decide
    stored = storage.push(settings, result.dataset, study=result.study_uid)
    assert stored.keys == 3 and len(_store_objects(settings)) == 3

    missing, short = _store_objects(settings)[:2]
    for path in (missing, short):
        os.chmod(path.parent, 0o755)
        os.chmod(path, 0o644)
    missing.unlink()
    short.write_bytes(b"truncated")
    with pytest.raises(StorageError, match="2 of 3 archives are missing or short"):
        storage.verify(settings, result.dataset, study=result.study_uid)

    assert storage.push(settings, result.dataset, study=result.study_uid) == stored
    assert storage.verify(settings, result.dataset, study=result.study_uid) == stored
    assert storage.store_url(settings) == f"ria+file://{settings.store_dir}"
