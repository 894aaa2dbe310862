"""Stage 4, store: push annexed content to the store, then verify it is there.

Two kinds, chosen by ``BIDSFLUX_STORAGE_TYPE``: ``local`` (a DataLad RIA
store on this machine, the embedded default) and ``s3`` (a git-annex S3
special remote: MinIO at sites).  Both are recorded with ``autoenable=true``
so that clones made from the forge can ``datalad get`` with no set-up.

Nothing is called stored until every key of the dataset has been seen in the
store with its right size: git-annex's word is not enough.  A missing or
short object is sent again (twice at most) before :func:`push` gives up.
An unreachable store raises a *transient* :class:`StorageError` (the worker
retries with backoff while the study waits in INDEXED); anything else is
permanent and says why.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._settings_storage import StorageSettings
from ..errors import StorageError
from ..settings import Settings
from . import _annex
from ._local import LocalStore
from ._s3config import format_size
from ._s3remote import S3Store

log = logging.getLogger(__name__)

RESENDS = 2  # extra rounds for objects that verification found missing or short


@dataclass(frozen=True)
class StoreResult:
    keys: int
    bytes: int


def _store(settings: Settings, study: str | None) -> LocalStore | S3Store:
    if settings.storage_type == "s3":
        return S3Store(settings, study=study)
    return LocalStore(settings, study=study)


def plan(settings: Settings, dataset: Path, *, study: str, tags: Mapping[str, Any],
         pattern: str | None = None) -> None:
    """Decide where a session's content will go, while its tags are at hand (at indexing).

    ``pattern`` is the study's routing rule's ``s3_url_pattern`` (None: the
    ``S3_URL_PATTERN`` setting).  Offline and cheap; raises
    :class:`~bidsflux.errors.NamingError` when the pattern gives no valid
    bucket, which quarantines the study.
    """
    _store(settings, study).plan(dataset, tags, pattern)


def ensure_remote(settings: Settings, dataset: Path, *, study: str | None,
                  tags: Mapping[str, Any] | None = None, like: Path | None = None) -> None:
    """Configure the store as a special remote of ``dataset`` if it is not yet.

    For ``s3`` the location comes from ``tags`` (a session), else from what
    :func:`plan` recorded, else beside the dataset ``like`` (the BIDS dataset
    beside its first session).  A clone enables the remote its branch knows.
    """
    _store(settings, study).ensure(dataset, tags=tags, like=like)


def confirm_remote(settings: Settings, dataset: Path, *, study: str | None) -> None:
    """Pass git-annex's verified-remote gate in a clone, after checking where the remote points.

    git-annex blocks writes from a clone to a special remote it learnt of from
    the git-annex branch until someone confirms the location; a CI job does
    that here, and only when the location is the configured store.
    """
    _store(settings, study).confirm(dataset)


def store_url(settings: Settings) -> str:
    """The configured store: ``ria+file://...`` or the S3 endpoint URL."""
    if settings.storage_type == "s3":
        return str(settings.s3_endpoint_url)
    return f"ria+file://{settings.store_dir}"


def push(settings: Settings, dataset: Path, *, study: str | None, jobs: int | None = None,
         tags: Mapping[str, Any] | None = None) -> StoreResult:
    """Copy every annexed file present here to the store, then verify each key there."""
    store = _store(settings, study)
    store.ensure(dataset, tags=tags)
    store.confirm(dataset)
    keys = _annex.annexed_keys(dataset, study=study)
    copy_error: str | None = None
    problems: dict[str, str] = {}
    for attempt in range(1 + RESENDS):
        copy_error = store.copy(dataset, jobs or settings.storage_jobs)
        problems = store.check(dataset, keys)
        if not problems:
            return _result(keys, study)
        here = _annex.present_keys(dataset, study=study)
        lost = sorted(k for k in problems if k not in here)
        if lost:
            raise store.failure(dataset, f"{len(lost)} of {len(keys)} archives are {problems[lost[0]]} "
                                f"(first: {lost[0]}) and their content is not here to send again", copy_error)
        log.warning("%d of %d archives missing or short in the store after round %d; sending them again",
                    len(problems), len(keys), attempt + 1, extra={"study_uid": study})
        store.discard(dataset, problems)
    first = sorted(problems)[0]
    raise store.failure(dataset, f"{len(problems)} of {len(keys)} archives are still missing or short after "
                        f"{1 + RESENDS} rounds (first: {first}: {problems[first]})", copy_error)


def verify(settings: Settings, dataset: Path, *, study: str | None) -> StoreResult:
    """Every annexed key of the dataset must be in the store with its size; raise if not."""
    store = _store(settings, study)
    keys = _annex.annexed_keys(dataset, study=study)
    problems = store.check(dataset, keys)
    if problems:
        first = sorted(problems)[0]
        raise StorageError(f"{len(problems)} of {len(keys)} archives are missing or short in the store "
                           f"(first: {first}: {problems[first]})", study=study,
                           hint="`bidsflux retry` sends them again")
    return _result(keys, study)


def _result(keys: list[str], study: str | None) -> StoreResult:
    return StoreResult(len(keys), sum(_annex.key_size(k, study=study) for k in keys))


def remote_uuid(settings: Settings, dataset: Path) -> str:
    uuid = _annex.enabled_uuid(dataset, settings.storage_remote)
    if not uuid:
        raise StorageError(f"dataset {dataset} has no storage remote {settings.storage_remote}")
    return uuid


def job_environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a CI job (or the local runner's job) needs in its environment to use the store.

    Every storage setting, and for ``s3`` the keys as git-annex reads them
    (``AWS_*``, for ``datalad get``) and ``annex.security.allowed-ip-addresses``
    for the endpoint, appended to any ``GIT_CONFIG_COUNT`` entries in ``base``.
    """
    env: dict[str, str] = {}
    for field in dataclasses.fields(StorageSettings):
        value = getattr(settings, field.name)
        if field.name == "storage_local_path":
            value = settings.store_dir
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif field.name in {"s3_part_size", "s3_chunk_size"}:
            text = format_size(value) if value else "0"
        else:
            text = str(value)
        env[field.metadata["env"]] = text
    if settings.storage_type == "s3":
        store = S3Store(settings, study=None)
        env.update(store.cfg.annex_env())
        options = store.cfg.git_options()
        if options:
            count = int((base or {}).get("GIT_CONFIG_COUNT", "0") or 0)
            key, _, value = options[1].partition("=")
            env.update({"GIT_CONFIG_COUNT": str(count + 1), f"GIT_CONFIG_KEY_{count}": key,
                        f"GIT_CONFIG_VALUE_{count}": value})
    return env


__all__ = ["StoreResult", "confirm_remote", "ensure_remote", "job_environment", "plan", "push", "remote_uuid",
           "store_url", "verify"]
